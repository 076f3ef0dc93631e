"""FID, KID and the Flax InceptionV3 plumbing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dallex.evaluation import fid, inception


def _gaussian(rng, n, d, shift=0.0, scale=1.0, mixing_seed=0):
  """n draws of a correlated Gaussian (one per mixing_seed), shifted and scaled."""
  mixing = np.random.default_rng(mixing_seed).normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mixing * scale + shift


def _scipy_frechet(a, b):
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(s_a @ s_b).real
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root))


def test_frechet_distance_matches_scipy():
  rng = np.random.default_rng(0)
  for shift, scale in ((0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 0.3)):
    a = _gaussian(rng, 400, 16)
    b = _gaussian(rng, 300, 16, shift, scale, mixing_seed=1)
    ours = fid.frechet_distance(
        fid.FeatureStats.from_features(a), fid.FeatureStats.from_features(b)
    )
    assert ours == pytest.approx(_scipy_frechet(a, b), rel=1e-6, abs=1e-8)
  # Identical statistics: zero, even for a rank-deficient covariance (N < D).
  few = fid.FeatureStats.from_features(rng.normal(size=(10, 32)))
  assert abs(fid.frechet_distance(few, few)) < 1e-6 * np.trace(few.cov)


def test_stats_are_float64_and_bad_input_is_named():
  stats = fid.FeatureStats.from_features(
      np.random.default_rng(0).normal(size=(50, 4))
  )
  assert stats.count == 50 and stats.mean.dtype == stats.cov.dtype == np.float64
  with pytest.raises(ValueError, match=r"features must be \[N >= 2, D\]"):
    fid.FeatureStats.from_features(np.zeros((1, 4)))
  with pytest.raises(ValueError, match="feature sizes differ"):
    fid.frechet_distance(
        stats,
        fid.FeatureStats.from_features(np.ones((3, 5)) * np.arange(3)[:, None]),
    )


def test_kid_is_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(0)
  a, b = _gaussian(rng, 600, 32), _gaussian(rng, 600, 32)
  same, same_std = fid.kernel_inception_distance(
      a, b, num_subsets=20, subset_size=300
  )
  self_kid, _ = fid.kernel_inception_distance(
      a, a, num_subsets=5, subset_size=600
  )
  other, _ = fid.kernel_inception_distance(
      a, _gaussian(rng, 600, 32, shift=0.5), num_subsets=20, subset_size=300
  )
  assert abs(same) < 3 * same_std + 1e-3
  assert other > 20 * max(abs(same), same_std)
  # A set against itself shares every point, which the unbiased estimator assumes
  # independent: it lands at -2 E[k(x, x)] / m, near zero beside a real difference.
  assert abs(self_kid) < 0.03 * other
  with pytest.raises(ValueError, match="same D"):
    fid.kernel_inception_distance(a, a[:, :3])


def _random_variables(model, size):
  """Random weights for the full network, built from its shapes (no slow init)."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.uint8)
  )
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:-1])
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(
          np.float32
      )
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(size=leaf.shape).astype(np.float32) * 0.1

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_inception_loads_a_state_dict_and_computes_pool3_features(tmp_path):
  size = 75  # the smallest input the network takes; FID itself uses 299
  model = inception.InceptionV3(size)
  variables = _random_variables(model, size)
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 21_785_568
  state = inception.to_state_dict(variables)
  # OIHW, as PyTorch saves.
  assert state["Conv2d_1a_3x3.conv.weight"].shape == (
      32,
      3,
      3,
      3,
  )
  assert state["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
  # The classifier is ignored.
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)
  path = str(tmp_path / "inception.npz")
  np.savez(path, **state)
  features = inception.load_inception(path, input_size=size)
  images = np.random.default_rng(1).integers(
      0, 256, (2, 32, 32, 3), dtype=np.uint8
  )
  out = np.asarray(features(images))
  assert out.shape == (2, inception.FEATURES) and np.all(np.isfinite(out))
  # The file holds exactly the variables (the loader applies the model to them).
  restored = inception.from_state_dict(dict(np.load(path)), variables)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  assert np.all(out >= 0)  # pool3 averages ReLU outputs
  assert np.abs(out[0] - out[1]).max() > 0

  del state["Mixed_6b.branch7x7_2.conv.weight"]
  state["Mixed_5b.branch1x1.bn.weight"] = np.zeros((3,), np.float32)
  np.savez(path, **state)
  with pytest.raises(
      ValueError,
      match=r"not an FID InceptionV3 state dict: "
      r"(?=.*missing Mixed_6b.branch7x7_2.conv.weight)"
      r"(?=.*Mixed_5b.branch1x1.bn.weight has shape \(3,\), expected \(64,\))",
  ):
    inception.load_inception(path, input_size=size)
  with pytest.raises(
      FileNotFoundError, match="Inception weights .* do not exist"
  ):
    inception.load_inception(str(tmp_path / "none.npz"))
