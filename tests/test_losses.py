import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dallex import losses
from dallex.perceptual import load_feature_net, perceptual_distance

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])


def _softplus(x):
  return math.log1p(math.exp(x))


def test_adversarial_losses_match_hand_values():
  # hinge: mean(max(0, 1 - [2, -1])) = (0 + 2) / 2; mean(max(0, 1 + [0.5, -3])) = (1.5 + 0) / 2
  assert float(losses.d_hinge(REAL, FAKE)) == pytest.approx(1.0 + 0.75)
  assert float(losses.g_hinge(FAKE)) == pytest.approx(1.25)
  d_ns = (_softplus(-2) + _softplus(1)) / 2 + (
      _softplus(0.5) + _softplus(-3)
  ) / 2
  assert float(losses.d_nonsaturating(REAL, FAKE)) == pytest.approx(
      d_ns, rel=1e-6
  )
  assert float(losses.g_nonsaturating(FAKE)) == pytest.approx(
      (_softplus(-0.5) + _softplus(3)) / 2, rel=1e-6
  )
  # The article's BCE: -log(sigmoid(real)) - log(1 - sigmoid(fake)).
  sig = lambda x: 1 / (1 + math.exp(-x))
  bce = np.mean([-math.log(sig(2)), -math.log(sig(-1))]) + np.mean(
      [-math.log(1 - sig(0.5)), -math.log(1 - sig(-3))]
  )
  assert float(losses.d_nonsaturating(REAL, FAKE)) == pytest.approx(
      bce, rel=1e-6
  )


def test_kl_is_zero_at_the_prior_and_matches_hand_value():
  assert (
      float(losses.kl_divergence(jnp.zeros((3, 4)), jnp.zeros((3, 4)))) == 0.0
  )
  mu, logvar = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, math.log(2.0)]])
  expected = 0.5 * ((1 + 1 - 1 - 0) + (4 + 2 - 1 - math.log(2.0)))
  assert float(losses.kl_divergence(mu, logvar)) == pytest.approx(
      expected, rel=1e-6
  )


def _toy_logits(w):
  """A per-sample nonlinear 'discriminator': logit_b = sum tanh(x_b @ w)."""
  return lambda x: jnp.sum(jnp.tanh(x.reshape(x.shape[0], -1) @ w), axis=-1)


def test_r1_matches_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(12, 5)))
    x = jnp.asarray(rng.normal(size=(3, 2, 2, 3)))
    fn = _toy_logits(w)
    eps = 1e-6
    grads = np.zeros((3, 12))
    flat = np.asarray(x).reshape(3, 12)
    for j in range(12):
      step = np.zeros((3, 12))
      step[:, j] = eps
      up = fn(jnp.asarray((flat + step).reshape(x.shape)))
      down = fn(jnp.asarray((flat - step).reshape(x.shape)))
      grads[:, j] = (np.asarray(up) - np.asarray(down)) / (2 * eps)
    expected = np.mean(np.sum(grads**2, axis=1))
    assert float(losses.r1_penalty(fn, x)) == pytest.approx(expected, rel=1e-6)


def test_matching_aware_gp_on_a_linear_critic():
  # D(x, e) = a.x + b.e: the gradient norm is sqrt(|a|^2 + |b|^2) for every sample.
  a, b = jnp.arange(6.0).reshape(1, 2, 3) / 10, jnp.array([0.3, -0.4])
  fn = lambda x, e: jnp.sum(x * a, axis=(1, 2)) + e @ b
  x, e = jnp.ones((4, 2, 3)), jnp.ones((4, 2))
  norm = math.sqrt(float(jnp.sum(a**2) + jnp.sum(b**2)))
  assert float(losses.matching_aware_gp(fn, x, e, power=6.0)) == pytest.approx(
      norm**6, rel=1e-4
  )
  assert float(losses.matching_aware_gp(fn, x, e, power=2.0)) == pytest.approx(
      norm**2, rel=1e-4
  )


def test_info_nce_extremes_and_hand_value():
  b = 8
  aligned = jnp.eye(b)
  assert float(losses.info_nce(aligned, aligned, 100.0)) < 1e-3
  rng = np.random.default_rng(0)
  unrelated_i = jnp.asarray(rng.normal(size=(b, 4096)))
  unrelated_t = jnp.asarray(rng.normal(size=(b, 4096)))
  assert float(losses.info_nce(unrelated_i, unrelated_t, 1.0)) == pytest.approx(
      math.log(b), abs=0.05
  )
  shuffled = aligned[jnp.roll(jnp.arange(b), 1)]
  # Confidently wrong.
  assert float(losses.info_nce(aligned, shuffled, 100.0)) > 50
  # 2 x 2 by hand: similarities [[1, 0], [0, 1]] at scale 1.
  expected = -math.log(math.e / (math.e + 1))
  assert float(losses.info_nce(jnp.eye(2), jnp.eye(2), 1.0)) == pytest.approx(
      expected, rel=1e-5
  )


def test_feature_matching_compares_batch_means_not_pairs_and_trains_g_only():
  real = [jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[0.0], [2.0]])]
  fake = [jnp.array([[0.0, 0.0], [1.0, 1.0]]), jnp.array([[2.0], [0.0]])]
  # Layer 1: batch means [2, 3] vs [0.5, 0.5] -> mean |.| = (1.5 + 2.5) / 2 = 2.
  # Layer 2: means 1 vs 1 -> 0, though each pair differs by 2 (pairs would give 2).
  assert float(losses.feature_matching(real, fake)) == pytest.approx(2.0)
  # The statistics of a batch, not its order: reversing the fakes changes nothing.
  assert float(
      losses.feature_matching(real, [f[::-1] for f in fake])
  ) == pytest.approx(2.0)
  # Batches of different sizes compare their means too: [2, 3] vs [0, 0], 1 vs 2.
  assert float(
      losses.feature_matching(real, [f[:1] for f in fake])
  ) == pytest.approx(2.5 + 1.0)
  g_real = jax.grad(lambda r: losses.feature_matching([r], fake[:1]))(real[0])
  assert not np.any(np.asarray(g_real))
  with pytest.raises(ValueError, match="2 real vs 4 fake"):
    losses.feature_matching(real, fake * 2)


def test_layout_loss_compares_the_grid_guess_with_the_real_block_averages():
  real = (
      jnp.zeros((1, 4, 4, 1)).at[0, :2, :2, 0].set(1.0).at[0, 3, 3, 0].set(-1.0)
  )
  # Block averages [[1, 0], [0, -0.25]]; a guess of all zeros is off by (1 + 0.25) / 4.
  assert float(
      losses.layout_loss(jnp.zeros((1, 2, 2, 1)), real)
  ) == pytest.approx(1.25 / 4)
  exact = jnp.array([[1.0, 0.0], [0.0, -0.25]])[None, :, :, None]
  assert float(losses.layout_loss(exact, real)) == 0.0
  g_real = jax.grad(lambda r: losses.layout_loss(exact + 1, r))(real)
  assert not np.any(np.asarray(g_real))
  with pytest.raises(
      ValueError, match="block side 3 must divide the resolution 4"
  ):
    losses.layout_loss(jnp.zeros((1, 3, 3, 1)), real)


def test_layout_loss_max_pool_compares_with_each_blocks_brightest_value_by_l1_or_l2():
  # A small bright object in the top left block, a dark background elsewhere.
  real = jnp.full((1, 4, 4, 2), -1.0).at[0, 0, 1, :].set(jnp.array([0.8, -0.6]))
  # Block maxima [[(0.8, -0.6), -1], [-1, -1]]; the block mean of the top left
  # (0.8 - 3) / 4 = -0.55 would dilute the object's colour by its coverage.
  exact = (
      jnp.full((1, 2, 2, 2), -1.0).at[0, 0, 0, :].set(jnp.array([0.8, -0.6]))
  )
  for distance in ("l1", "l2"):
    assert float(
        losses.layout_loss(exact, real, "max", distance)
    ) == pytest.approx(0, abs=1e-7)
  errors = jnp.array([0.8 + 0.55, -0.6 + 0.9])  # against the block means
  assert float(losses.layout_loss(exact, real, "mean")) == pytest.approx(
      float(jnp.abs(errors).sum()) / 8
  )
  assert float(losses.layout_loss(exact, real, "mean", "l2")) == pytest.approx(
      float(jnp.square(errors).sum()) / 8
  )
  with pytest.raises(ValueError, match="layout pool must be one of"):
    losses.layout_loss(exact, real, pool="median")
  with pytest.raises(ValueError, match="layout distance must be one of"):
    losses.layout_loss(exact, real, distance="huber")


def _feature_net_file(path, channels=(3, 4, 6)):
  rng = np.random.default_rng(0)
  arrays = {"pool_after": np.array([0])}
  for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
    arrays[f"conv{i}/kernel"] = rng.normal(0, 0.3, (3, 3, cin, cout)).astype(
        np.float32
    )
    arrays[f"conv{i}/bias"] = rng.normal(0, 0.1, (cout,)).astype(np.float32)
  np.savez(path, **arrays)
  return str(path)


def test_diversity_shortfall_pushes_pairs_apart_until_the_target_and_no_further():
  a = jnp.zeros((2, 2, 2, 1))
  b = a.at[0].set(0.5)  # pair 0 differs by 0.5 everywhere, pair 1 not at all
  # The batch's mean |difference| is 0.25: short of 0.4 by 0.15.
  assert float(losses.diversity_shortfall(a, b, 0.4)) == pytest.approx(0.15)
  g_a, g_b = jax.grad(losses.diversity_shortfall, argnums=(0, 1))(a, b, 0.4)
  # Descending the gradient moves every pixel of each pair away from its
  # partner (identical pixels take the subgradient 0 of |x| at 0).
  assert np.all(np.asarray(g_a[0]) > 0) and np.all(np.asarray(g_b[0]) < 0)
  np.testing.assert_allclose(g_a[0], -g_b[0])
  # At the target (or past it) the term is 0 and pushes nothing.
  assert float(losses.diversity_shortfall(a, b, 0.25)) == 0.0
  g_a, g_b = jax.grad(losses.diversity_shortfall, argnums=(0, 1))(a, b, 0.2)
  assert not np.any(np.asarray(g_a)) and not np.any(np.asarray(g_b))


def test_frozen_feature_net_loss(tmp_path):
  net = load_feature_net(_feature_net_file(tmp_path / "net.npz"))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  assert float(perceptual_distance(net, x, x)) == 0.0
  assert float(perceptual_distance(net, x, y)) > 0.01
  gx, gy = jax.grad(
      lambda a, b: perceptual_distance(net, a, b), argnums=(0, 1)
  )(x, y)
  assert np.any(np.asarray(gx)) and not np.any(np.asarray(gy))


def test_feature_net_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_feature_net(str(tmp_path / "missing.npz"))
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    load_feature_net(str(tmp_path / "junk.npz"))
  np.savez(
      tmp_path / "bad.npz",
      **{"conv0/kernel": np.zeros((3, 3, 4, 8)), "conv0/bias": np.zeros(8)},
  )
  with pytest.raises(
      ValueError,
      match=r"conv0/kernel has shape \(3, 3, 4, 8\), expected \(3, 3, 3",
  ):
    load_feature_net(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "empty.npz", mean=np.zeros(3))
  with pytest.raises(ValueError, match="no conv0/kernel"):
    load_feature_net(str(tmp_path / "empty.npz"))


def test_reconstruction_is_the_mean_absolute_difference():
  real = jnp.zeros((2, 4, 4, 3)).at[0, 1, 2].set(1.0)
  generated = jnp.full((2, 4, 4, 3), -0.5)
  # 93 of the 96 values differ by 0.5, the pixel set to 1 by 1.5.
  assert float(losses.reconstruction(generated, real)) == pytest.approx(
      (93 * 0.5 + 3 * 1.5) / 96
  )
  assert float(losses.reconstruction(real, real)) == 0.0
