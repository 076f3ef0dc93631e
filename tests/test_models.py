import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_batch, tiny_config, trained_like
from dallex import noise
from dallex.models import TextEncoder, build_models, cpu_kernels
from dallex.models.generator import AdaIN, UpsampleConv, inward_clip, upsample2x
from dallex.models.layers import Conv, PointwiseConv, fused_attention
from dallex.models.seed import SeedTextEncoder
from dallex.objective import build_objective, init_params
from dallex.text import PAD_ID, VOCAB_SIZE, ByteTokenizer

warnings.filterwarnings("ignore", message=".*captions truncated.*")


@functools.cache
def _params(arch, resolution):
  """Parameters depend on the architecture and resolution only (not on the
  losses): initialise once (an init compiles for seconds on CPU)."""
  config = tiny_config(arch, resolution)
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  return jax.jit(lambda k: init_params(objective, k, batch))(jax.random.key(0))


def _setup(arch="dallex", resolution=32, batch_size=4, **loss):
  config = tiny_config(arch, resolution)
  config.loss.update(loss)
  objective = build_objective(config)
  batch = tiny_batch(config, batch_size)
  g_params, d_params = _params(arch, resolution)
  return config, objective, batch, g_params, d_params


def _generate(objective, g_params, ids, mask, key=None, truncation=1.0):
  z, eps = noise.latents(
      jax.random.key(1) if key is None else key,
      jnp.arange(ids.shape[0]),
      objective.z_dim,
      objective.ca_dim,
      truncation,
  )
  return jax.jit(objective.generator.apply)(g_params, ids, mask, z, eps)


@pytest.mark.parametrize("arch", ["dallex", "seed"])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shapes_and_dtypes(arch, resolution):
  """Shapes and dtypes by abstract evaluation: exact, and nothing to compile."""
  config = tiny_config(arch, resolution)
  objective = build_objective(config)
  batch = tiny_batch(config, 2)

  def forward(key):
    g_params, d_params = init_params(objective, key, batch)
    z, eps = noise.latents(
        key, jnp.arange(2), objective.z_dim, objective.ca_dim
    )
    out = objective.generator.apply(
        g_params, batch["ids"], batch["mask"], z, eps
    )
    return out, objective.discriminator.apply(
        d_params, out.images, batch["ids"], batch["mask"]
    )

  out, (judgement, feats) = jax.eval_shape(forward, jax.random.key(0))
  assert (
      out.images.shape == (2, resolution, resolution, 3)
      and out.images.dtype == jnp.float32
  )
  assert judgement.logit.shape == (2,) and judgement.logit.dtype == jnp.float32
  assert feats and all(f.shape[0] == 2 for f in feats)
  if arch == "dallex":
    assert out.text.tokens.shape == (2, 48, 32) and out.text.sentence.shape == (
        2,
        32,
    )
    assert judgement.img_emb.shape == judgement.txt_emb.shape == (2, 16)
    assert feats[-1].shape[1:3] == (4, 4)  # down to a 4x4 map whatever R is
    assert len(feats) == {32: 3, 64: 4, 128: 5}[resolution]


@pytest.mark.parametrize("arch", ["dallex", "seed"])
def test_images_are_in_range(arch):
  _, objective, batch, g_params, _ = _setup(arch)
  images = _generate(objective, g_params, batch["ids"], batch["mask"]).images
  assert float(jnp.abs(images).max()) <= 1.0 and float(images.std()) > 1e-3


def test_output_clip_passes_only_gradients_that_point_back_into_range():
  x = jnp.array([-3.0, -3.0, -0.5, 0.5, 2.0, 2.0])
  g = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # descent moves x by -g
  y, vjp = jax.vjp(inward_clip, x)
  np.testing.assert_array_equal(y, [-1.0, -1.0, -0.5, 0.5, 1.0, 1.0])
  # Below -1, g = 1 would push further down: blocked; g = -1 pulls up: passed.
  # Inside: identity. Above 1, g = -1 would push further up: blocked.
  np.testing.assert_array_equal(vjp(g)[0], [0.0, -1.0, 1.0, -1.0, 1.0, 0.0])


def test_upsampling_copies_each_pixel_to_a_2x2_block_and_sums_its_gradient_back():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  y = upsample2x(x)
  np.testing.assert_array_equal(
      y, jax.image.resize(x, (2, 6, 10, 4), "nearest")
  )
  np.testing.assert_array_equal(y[:, 1::2, ::2], x)
  g = jax.random.normal(jax.random.key(1), y.shape)
  block_sums = g.reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))
  np.testing.assert_allclose(
      jax.vjp(upsample2x, x)[1](g)[0], block_sums, rtol=1e-6
  )


def _like_reference(module, reference, x, reference_x=None, scale=1.0):
  """``module``'s parameters for ``x``, checked to be ``reference``'s from the
  same key (on ``reference_x``, default ``x``), then moved off init by noise."""
  params = module.init(jax.random.key(1), x)
  expected = reference.init(
      jax.random.key(1), x if reference_x is None else reference_x
  )
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  key = jax.random.key(2)
  return jax.tree.map(
      lambda p: p + scale * jax.random.normal(key, p.shape), params
  )


@pytest.mark.parametrize("cpu", [True, False])
def test_upsample_conv_is_the_convolution_of_the_upsampled_input(
    cpu, monkeypatch
):
  """Values and gradients of conv3x3(upsample2x(x)), borders included, from
  the same parameters: nn.Conv's, initialised alike from the same key. On CPU
  by folded taps, elsewhere (forced here) by the convolution itself."""
  monkeypatch.setattr(cpu_kernels, "active", lambda: cpu)
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  conv, reference = UpsampleConv(6), nn.Conv(6, (3, 3))
  params = _like_reference(conv, reference, x, upsample2x(x))

  def both(p, x):
    return conv.apply(p, x), reference.apply(p, upsample2x(x))

  fast, slow = both(params, x)
  assert fast.shape == (2, 6, 10, 6)
  np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(jax.random.key(3), fast.shape)
  grads = [
      jax.grad(lambda p, x, i=i: jnp.sum(both(p, x)[i] * g), argnums=(0, 1))(
          params, x
      )
      for i in range(2)
  ]
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4),
      *grads,
  )
  half = UpsampleConv(6, dtype=jnp.bfloat16).apply(params, x)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      half.astype(jnp.float32), slow, rtol=0.05, atol=0.1
  )


def test_pointwise_conv_is_a_1x1_convolution():
  """Same parameters as nn.Conv(features, (1, 1)) from the same key, and the
  same values and gradients from them; the compute dtype is honoured."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  conv, reference = PointwiseConv(6), nn.Conv(6, (1, 1))
  params = _like_reference(conv, reference, x)
  np.testing.assert_allclose(
      conv.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5
  )
  g = jax.random.normal(jax.random.key(3), (2, 3, 5, 6))
  grads = [
      jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * g), argnums=(0, 1))(
          params, x
      )
      for m in (conv, reference)
  ]
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
      *grads,
  )
  assert (
      PointwiseConv(6, dtype=jnp.bfloat16).apply(params, x).dtype
      == jnp.bfloat16
  )


class _FlaxGRUEncoder(nn.Module):
  """The seed text encoder as it was written with Flax's own GRU."""

  @nn.compact
  def __call__(self, ids, mask):
    x = nn.Embed(VOCAB_SIZE, 8, name="embedding")(ids)
    lengths = mask.sum(axis=1).astype(jnp.int32)
    return nn.RNN(nn.GRUCell(16), return_carry=True, name="gru")(
        x, seq_lengths=lengths
    )


def test_seed_gru_is_flax_gru_with_its_parameters_values_and_gradients():
  """SequenceGRU's fused products: the parameters nn.RNN(nn.GRUCell) makes
  from the same key (so checkpoints saved with it load), and the same
  state after each caption's last real token, states, and gradients (its
  own backward pass) through both."""
  ids, mask = ByteTokenizer(16).encode(["a red circle", "a", "blue squares"])
  encoder, reference = SeedTextEncoder(VOCAB_SIZE, 8, 16), _FlaxGRUEncoder()
  params = encoder.init(jax.random.key(1), ids, mask)
  jax.tree.map(
      np.testing.assert_array_equal,
      params,
      reference.init(jax.random.key(1), ids, mask),
  )
  params = jax.tree.map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params
  )
  ours = encoder.apply(params, ids, mask)
  hidden, states = reference.apply(params, ids, mask)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  close(ours.sentence, hidden)
  close(ours.tokens, states)
  # Gradients through the last states and through every state, as the
  # hand-written backward pass takes them.
  g, g_all = (
      jax.random.normal(jax.random.key(k), a.shape)
      for k, a in ((3, hidden), (4, states))
  )
  loss = lambda last, every: jnp.sum(jnp.tanh(last) * g) + jnp.sum(
      every * g_all
  )

  def ours_loss(p):
    out = encoder.apply(p, ids, mask)
    return loss(out.sentence, out.tokens)

  reference_loss = lambda p: loss(*reference.apply(p, ids, mask))
  jax.tree.map(
      close, jax.grad(ours_loss)(params), jax.grad(reference_loss)(params)
  )


@pytest.mark.parametrize("batch,cpu", [(3, True), (20, True), (20, False)])
def test_conv_is_nn_conv_with_the_same_derivatives(batch, cpu, monkeypatch):
  """Conv has nn.Conv's parameters from the same key and its values; its
  gradients, also the R1 penalty's gradient of a gradient, and its forward-mode
  derivative match XLA's convolution's. At batch 20 (32 px, 16 channels) the
  kernel gradient is summed over uneven chunks of the batch (8 + 8 + 4 images
  with the CPU kernels; elsewhere (forced here) XLA's convolution runs as it is).
  """
  monkeypatch.setattr(cpu_kernels, "active", lambda: cpu)
  x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 16))
  conv, reference = Conv(8, kernel_init=nn.initializers.he_normal()), nn.Conv(
      8, (3, 3), kernel_init=nn.initializers.he_normal()
  )
  params = _like_reference(conv, reference, x, scale=0.1)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4)
  close(conv.apply(params, x), reference.apply(params, x))
  loss = lambda m, p, x: jnp.sum(jnp.tanh(m.apply(p, x)) ** 2)
  jax.tree.map(
      close,
      *[
          jax.grad(loss, argnums=(1, 2))(m, params, x)
          for m in (conv, reference)
      ],
  )
  r1 = lambda m, p: jnp.sum(
      jax.grad(lambda x: jnp.sum(jnp.tanh(m.apply(p, x))))(x) ** 2
  )
  grads = [jax.grad(r1, argnums=1)(m, params) for m in (conv, reference)]
  jax.tree.map(
      lambda a, b: close(a / jnp.abs(b).max(), b / jnp.abs(b).max()), *grads
  )
  tangents = [
      jax.jvp(lambda p, x, m=m: m.apply(p, x), (params, x), (params, x))[1]
      for m in (conv, reference)
  ]
  close(*tangents)
  # In bfloat16, the kernel gradient summed over its chunks stays near
  # nn.Conv's in bfloat16.
  halves = Conv(8, dtype=jnp.bfloat16), nn.Conv(8, (3, 3), dtype=jnp.bfloat16)
  assert halves[0].apply(params, x).dtype == jnp.bfloat16
  kernels = [
      jax.grad(lambda p, m=m: jnp.sum(m.apply(p, x).astype(jnp.float32) ** 2))(
          params
      )["params"]["kernel"]
      for m in halves
  ]
  np.testing.assert_allclose(
      *kernels, rtol=0.05, atol=0.02 * np.abs(kernels[1]).max()
  )


def test_cpu_conv2d_takes_any_stride_1_padding():
  """cpu_kernels.conv2d with uneven padding (as the upsampling phases use it)
  and a non-square kernel: XLA's values and gradients."""
  x = jax.random.normal(jax.random.key(0), (20, 32, 32, 16))
  kernel = jax.random.normal(jax.random.key(1), (2, 3, 16, 4))
  padding = ((0, 1), (2, 0))
  xla = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  ours = lambda x, k: cpu_kernels.conv2d(x, k, padding)
  np.testing.assert_allclose(
      ours(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-4
  )
  grads = [
      jax.grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1))(
          x, kernel
      )
      for f in (ours, xla)
  ]
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-3),
      *grads,
  )


def test_adain_is_the_modulated_instance_norm_formula():
  """IN(x) * (1 + scale) + shift, per sample and channel, with the two-pass
  variance as reference, also where the mean is large against the spread."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = 20.0 + 0.5 * jax.random.normal(keys[0], (3, 6, 5, 4))
  style = jax.random.normal(keys[1], (3, 7))
  norm = AdaIN()
  params = norm.init(keys[2], x, style)
  params = jax.tree.map(lambda p: jax.random.normal(keys[2], p.shape), params)
  dense = params["params"]["Dense_0"]
  scale, shift = jnp.split(style @ dense["kernel"] + dense["bias"], 2, axis=-1)
  mean = x.mean(axis=(1, 2), keepdims=True)
  unit = (x - mean) / jnp.sqrt(
      ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True) + 1e-5
  )
  expected = unit * (1 + scale[:, None, None]) + shift[:, None, None]
  np.testing.assert_allclose(
      norm.apply(params, x, style), expected, rtol=1e-3, atol=1e-3
  )


def test_resolution_must_be_grid_times_power_of_two():
  with pytest.raises(
      ValueError, match="resolution 48 must be 4 times a power of two"
  ):
    _setup(resolution=48)


@pytest.mark.parametrize("arch", ["dallex", "seed"])
def test_appending_padding_changes_nothing(arch):
  config, objective, batch, g_params, _ = _setup(arch)
  batch = tiny_batch(
      config,
      4,
      captions=[
          "a small red circle on the left",
          "猫 🐱",
          "x",
          "a large blue square at the top",
      ],
  )
  ids, mask = batch["ids"][:, :40], batch["mask"][:, :40]
  assert not mask[:, -8:].any()  # the tail really is padding
  short = _generate(objective, g_params, ids[:, :32], mask[:, :32])
  long = _generate(objective, g_params, ids, mask)
  n = 32
  real = np.asarray(mask[:, :n])
  np.testing.assert_allclose(
      np.asarray(short.text.tokens)[real],
      np.asarray(long.text.tokens)[:, :n][real],
      atol=1e-5,
  )
  np.testing.assert_allclose(short.text.sentence, long.text.sentence, atol=1e-5)
  # Masked keys get exactly zero weight; what is left is float32 summation order.
  np.testing.assert_allclose(short.images, long.images, atol=1e-5, rtol=1e-5)
  # And the padding is really there: ids beyond the captions are PAD.
  assert (ids[:, 32:] == PAD_ID).all()


def _zero_leaves(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]


@pytest.mark.parametrize(
    "arch,loss",
    [
        ("dallex", dict(adversarial="hinge", gradient_penalty="r1")),
        (
            "dallex",
            dict(
                adversarial="nonsaturating",
                gradient_penalty="magp",
                learn_temperature=False,
            ),
        ),
        ("seed", {}),
    ],
)
def test_every_parameter_learns_from_its_own_loss_only(arch, loss):
  config, objective, batch, g_params, d_params = _setup(arch, **loss)
  # At init the zero-initialised style projections pass no gradient to the
  # mapping and the conditioning: check from parameters away from init.
  g_params = trained_like(g_params, scale=0.1)
  if loss.get("adversarial", "hinge") == "hinge":
    # While every hinge margin is active (|logit| < 1, as at init) the gradient
    # of the unconditional bias is exactly 1 - 1 = 0, by the loss's form; move
    # the real logits past the margin so the check can see the bias learn.
    d_params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 2.0
        if "uncond" in jax.tree_util.keystr(p)
        and "bias" in jax.tree_util.keystr(p)
        else x,
        d_params,
    )
  key = jax.random.key(3)
  d_grads, g_in_d = jax.jit(
      jax.grad(
          lambda d, g: objective.discriminator_loss(d, g, batch, key)[0],
          argnums=(0, 1),
      )
  )(d_params, g_params)
  g_grads, d_in_g = jax.jit(
      jax.grad(
          lambda g, d: objective.generator_loss(g, d, batch, key)[0],
          argnums=(0, 1),
      )
  )(g_params, d_params)
  frozen_scale = (
      []
      if loss.get("learn_temperature", True) or arch == "seed"
      else ["['params']['head']['log_logit_scale']"]
  )
  assert _zero_leaves(d_grads) == frozen_scale
  assert _zero_leaves(g_grads) == []
  # Each tree gets nothing from the other player's loss.
  assert len(_zero_leaves(d_in_g)) == len(jax.tree.leaves(d_params))
  assert len(_zero_leaves(g_in_d)) == len(jax.tree.leaves(g_params))


def test_same_key_same_images_different_key_different_images():
  _, objective, batch, g_params, _ = _setup()
  g_params = trained_like(g_params)
  a = _generate(
      objective, g_params, batch["ids"], batch["mask"], jax.random.key(5)
  ).images
  b = _generate(
      objective, g_params, batch["ids"], batch["mask"], jax.random.key(5)
  ).images
  c = _generate(
      objective, g_params, batch["ids"], batch["mask"], jax.random.key(6)
  ).images
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).mean()) > 1e-3
  # Truncation 0 removes the noise: every key gives the caption's mean image.
  t0 = _generate(
      objective, g_params, batch["ids"], batch["mask"], jax.random.key(5), 0.0
  ).images
  t1 = _generate(
      objective, g_params, batch["ids"], batch["mask"], jax.random.key(6), 0.0
  ).images
  np.testing.assert_array_equal(t0, t1)


def test_diversity_partners_are_the_first_captions_under_other_noise():
  _, objective, batch, g_params, d_params = _setup(
      diversity=1.0, diversity_target=0.5, diversity_pairs=2
  )
  g_params = trained_like(g_params)
  key = jax.random.key(5)
  out, partners = jax.jit(objective.generate_pass)(g_params, batch, key)
  # The batch's own images are what G draws without the term. Up to the
  # rounding of other batch sizes' kernels, which depends on the CPU (1.1e-4
  # on an AMD EPYC without AVX-512); another z moves the mean pixel 1e-3 or more.
  tol = 5e-4
  plain = _generate(objective, g_params, batch["ids"], batch["mask"], key)
  np.testing.assert_allclose(out.images, plain.images, atol=tol)
  np.testing.assert_allclose(out.layout, plain.layout, atol=tol)
  assert partners.shape == (2, *out.images.shape[1:])
  # Each partner is its caption's image under another z and the same
  # conditioning noise: G of that caption with the partner's z.
  _, eps = noise.latents(key, jnp.arange(4), objective.z_dim, objective.ca_dim)
  z_partner, _ = noise.latents(
      jax.random.fold_in(key, 2**31 + 1), jnp.arange(2), objective.z_dim, 1
  )
  again = jax.jit(objective.generator.apply)(
      g_params, batch["ids"][:2], batch["mask"][:2], z_partner, eps[:2]
  ).images
  np.testing.assert_allclose(partners, again, atol=tol)
  assert float(jnp.abs(partners - out.images[:2]).mean()) > 1e-3
  # The loss adds the shortfall, and G's gradient differs from the one
  # without the term (tests/test_train.py: the step pulls it back through
  # both halves of the pass).
  loss_fn = lambda objective: jax.jit(
      jax.value_and_grad(
          lambda g: objective.generator_loss(g, d_params, batch, key),
          has_aux=True,
      )
  )(g_params)
  (_, metrics), grads = loss_fn(objective)
  (_, plain_metrics), plain_grads = loss_fn(_setup()[1])
  shortfall = max(0.0, 0.5 - float(jnp.abs(partners - out.images[:2]).mean()))
  assert float(metrics["g_diversity_shortfall"]) == pytest.approx(
      shortfall, rel=1e-4
  )
  assert float(metrics["g_loss"]) == pytest.approx(
      float(plain_metrics["g_loss"]) + shortfall, rel=1e-4
  )
  assert not np.allclose(
      grads["params"]["to_rgb"]["kernel"],
      plain_grads["params"]["to_rgb"]["kernel"],
  )
  with pytest.raises(ValueError, match="loss.diversity_target > 0"):
    _setup(diversity=1.0, diversity_target=0.0)


def test_reconstruction_pulls_only_the_first_rows_toward_their_real_images():
  _, objective, batch, g_params, d_params = _setup(
      reconstruction=2.0, reconstruction_rows=0.5
  )
  g_params = trained_like(g_params)
  key = jax.random.key(5)
  images = _generate(
      objective, g_params, batch["ids"], batch["mask"], key
  ).images

  def loss_and_image_grads(objective):
    out = objective.generate(g_params, batch, key)
    return jax.jit(
        jax.value_and_grad(
            lambda x: objective.generator_output_loss(
                out._replace(images=x), d_params, batch
            ),
            has_aux=True,
        )
    )(out.images)

  (_, metrics), grads = loss_and_image_grads(objective)
  (_, plain), plain_grads = loss_and_image_grads(_setup(reconstruction=0.0)[1])
  # Half of the batch of 4: rows 0 and 1, against their own real images.
  l1 = float(jnp.abs(images[:2] - batch["image"][:2]).mean())
  assert float(metrics["g_reconstruction"]) == pytest.approx(l1, rel=1e-4)
  assert float(metrics["g_loss"]) == pytest.approx(
      float(plain["g_loss"]) + 2.0 * l1, rel=1e-4
  )
  # Its gradient on G's images: 2 sign(G - x) / n on the first rows, none
  # on the others (n: the values of two images).
  extra = np.asarray(grads - plain_grads)
  sign = np.sign(np.asarray(images - batch["image"]))
  np.testing.assert_allclose(
      extra[:2], 2.0 * sign[:2] / sign[:2].size, atol=1e-7
  )
  np.testing.assert_array_equal(extra[2:], 0.0)
  with pytest.raises(ValueError, match=r"reconstruction_rows .* in \(0, 1\]"):
    _setup(reconstruction=1.0, reconstruction_rows=0.0)


def test_bfloat16_is_computed_inside_and_stays_close_to_float32():
  config, objective, batch, g_params, d_params = _setup()
  config.model.dtype = "bfloat16"
  g16, d16 = build_models(config.model, config.data.resolution)
  z, eps = noise.latents(
      jax.random.key(1), jnp.arange(4), objective.z_dim, objective.ca_dim
  )
  out32 = jax.jit(objective.generator.apply)(
      g_params, batch["ids"], batch["mask"], z, eps
  )
  out16, state = jax.jit(
      functools.partial(
          g16.apply, capture_intermediates=True, mutable=["intermediates"]
      )
  )(g_params, batch["ids"], batch["mask"], z, eps)
  inside = state["intermediates"]
  # The layers compute in bfloat16: text tokens, the grid Transformer, every up block.
  assert inside["text_encoder"]["__call__"][0].tokens.dtype == jnp.bfloat16
  assert inside["transformer"]["__call__"][0].dtype == jnp.bfloat16
  for i in range(3):
    assert inside[f"up_{i}"]["__call__"][0].dtype == jnp.bfloat16
  # Outputs and parameters stay float32.
  assert out16.images.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits (0.4% relative): the pixels move, by a
  # bounded amount. Stated tolerance after the whole generator, for pixels in
  # [-1, 1]: mean error in (1e-3, 0.03), worst < 0.3.
  diff = jnp.abs(out16.images - out32.images)
  assert 1e-3 < float(diff.mean()) < 0.03 and float(diff.max()) < 0.3, (
      diff.mean(),
      diff.max(),
  )
  j32, _ = jax.jit(objective.discriminator.apply)(
      d_params, out32.images, batch["ids"], batch["mask"]
  )
  (j16, feats16), state = jax.jit(
      functools.partial(
          d16.apply, capture_intermediates=True, mutable=["intermediates"]
      )
  )(d_params, out32.images, batch["ids"], batch["mask"])
  assert all(f.dtype == jnp.bfloat16 for f in feats16)
  assert float(jnp.max(jnp.abs(j16.logit - j32.logit))) > 0
  np.testing.assert_allclose(
      j16.logit, j32.logit, atol=0.05 + 0.05 * float(jnp.abs(j32.logit).max())
  )


@pytest.mark.parametrize(
    "attention", [cpu_kernels.attention, fused_attention], ids=["cpu", "fused"]
)
def test_attention_is_the_masked_softmax_formula_with_its_gradient(attention):
  """Both forms: CPU's own and jax.nn's (which GPU and TPU run)."""
  rng = np.random.default_rng(0)
  q, k, v = (
      jnp.asarray(rng.normal(size=(2, n, 3, 4)) * 3, jnp.float32)
      for n in (5, 6, 6)
  )
  # Row 2: nothing visible.
  mask = jnp.asarray([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)

  def textbook(q, k, v, mask):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)

  out = attention(q, k, v, mask)
  np.testing.assert_allclose(
      out[:1],
      textbook(*(np.asarray(x[:1]) for x in (q, k, v, mask))),
      rtol=1e-5,
      atol=1e-6,
  )
  np.testing.assert_array_equal(out[1], 0.0)
  # Masked keys get exactly zero weight: their values do not reach the output.
  np.testing.assert_array_equal(attention(q, k, v.at[0, 2].set(1e6), mask), out)
  # Gradients are those of jax.nn.softmax attention (the max is held constant),
  # and nothing flows back through the row that sees no key.
  ref = lambda q, k, v: jnp.einsum(
      "bhqk,bkhd->bqhd",
      jax.nn.softmax(
          jnp.where(
              mask[:1, None, None, :],
              jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0,
              -1e30,
          ),
          -1,
      ),
      v,
  )
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)[:1]))
  grads = jax.grad(loss(lambda *a: attention(*a, mask)), (0, 1, 2))(q, k, v)
  for a, b in zip(grads, jax.grad(loss(ref), (0, 1, 2))(q[:1], k[:1], v[:1])):
    np.testing.assert_allclose(a[:1], b, rtol=1e-4, atol=1e-5)
  full = jax.grad(lambda *a: jnp.sum(jnp.sin(attention(*a, mask))), (0, 1, 2))(
      q, k, v
  )
  assert all(np.all(g[1] == 0) for g in full)


def _unstacked(params):
  """Scanned TransformerStack parameters ({"blocks": leaves with a depth axis})
  laid out as an unrolled stack's ({"block_0": ..., "block_1": ...})."""
  if not isinstance(params, dict):
    return params
  out = {}
  for name, value in params.items():
    if name == "blocks":
      for i in range(jax.tree.leaves(value)[0].shape[0]):
        out[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[name] = _unstacked(value)
  return out


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_stacks_compute_the_unrolled_function_and_gradients(remat):
  """The generator with its Transformer stacks scanned (the default) against
  the same parameters unrolled, optionally rematerialised: images and the
  gradients of a loss of them with respect to every parameter."""
  config, objective, batch, g_params, _ = _setup()
  # A depth axis.
  assert jax.tree.leaves(g_params["params"]["transformer"])[0].shape[0] == 2
  config.model.update(scan=False, remat=remat)
  unrolled, _ = build_models(config.model, config.data.resolution)
  z, eps = noise.latents(
      jax.random.key(1), jnp.arange(4), objective.z_dim, objective.ca_dim
  )
  u_params = _unstacked(g_params)
  layout = jax.eval_shape(
      unrolled.init, jax.random.key(0), batch["ids"], batch["mask"], z, eps
  )
  assert jax.tree.structure(u_params) == jax.tree.structure(layout)

  def loss(generator, params):
    images = generator.apply(params, batch["ids"], batch["mask"], z, eps).images
    return jnp.sum(jnp.sin(3.0 * images)), images

  (_, a), grads_a = jax.jit(
      jax.value_and_grad(
          functools.partial(loss, objective.generator), has_aux=True
      )
  )(g_params)
  (_, b), grads_b = jax.jit(
      jax.value_and_grad(functools.partial(loss, unrolled), has_aux=True)
  )(u_params)
  np.testing.assert_allclose(a, b, atol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_b))
  jax.tree.map(
      functools.partial(
          np.testing.assert_allclose, rtol=1e-4, atol=1e-5 * scale
      ),
      _unstacked(grads_a),
      grads_b,
  )


def test_cpu_kernels_are_chosen_by_backend(monkeypatch):
  """On CPU every 3x3 convolution of both networks runs as cpu_kernels (a
  custom derivative in the trace); on other backends (forced here) as XLA's
  own. Each form is checked against XLA's at the layer (the tests above)."""
  _, objective, batch, g_params, d_params = _setup()
  z, eps = noise.latents(
      jax.random.key(1), jnp.arange(4), objective.z_dim, objective.ca_dim
  )

  def trace():
    # A new function each time: JAX caches traces by function.
    def loss(g, d):
      images = objective.generator.apply(
          g, batch["ids"], batch["mask"], z, eps
      ).images
      return jnp.sum(
          objective.discriminator.apply(d, images, method="features")[0]
      )

    return str(
        jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(g_params, d_params)
    )

  on_cpu = trace()
  monkeypatch.setattr(cpu_kernels, "active", lambda: False)
  plain = trace()
  # 3 up blocks x (4 phases + 1), 1 stem + 3 down blocks x 2 + 1 final; each
  # appears once more in the backward pass.
  assert on_cpu.count("name=conv2d") >= 15 + 8
  assert plain.count("name=conv2d") == 0 and plain.count(
      "conv_general_dilated"
  ) >= 2 * (6 + 8)


def test_conditioning_augmentation_samples_around_the_mean_and_can_be_switched_off():
  from dallex.models.conditioning import ConditioningAugmentation

  sentence = jax.random.normal(jax.random.key(0), (3, 8))
  eps = jax.random.normal(jax.random.key(1), (3, 4))
  on = ConditioningAugmentation(4)
  params = on.init(jax.random.key(2), sentence, eps)
  sampled = on.apply(params, sentence, eps)
  np.testing.assert_allclose(
      sampled.c, sampled.mu + jnp.exp(0.5 * sampled.logvar) * eps, rtol=1e-6
  )
  np.testing.assert_allclose(on.apply(params, sentence, 0 * eps).c, sampled.mu)
  off = ConditioningAugmentation(4, augment=False).apply(params, sentence, eps)
  np.testing.assert_array_equal(off.c, sampled.mu)


def _fit(loss, params, steps, lr=3e-2):
  """``steps`` full-batch Adam steps on ``loss(params)``."""
  opt = optax.adam(lr)

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p), s)
    return optax.apply_updates(p, updates), s

  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize("local", [False, True])
def test_local_style_paints_two_regions_in_two_colours(local):
  """On a flat feature map IN(x) is zero and AdaIN's output is its shift: one
  value per channel for the whole image from the style vector alone, so two
  objects cannot take two colours; read from a per-cell map it can."""
  keys = jax.random.split(jax.random.key(0), 3)
  cells = jax.random.normal(keys[0], (16, 2, 2, 3))  # each cell's wanted colour
  local_map = jnp.concatenate(
      [cells, jax.random.normal(keys[1], (16, 2, 2, 5))], -1
  )
  target = jax.image.resize(cells, (16, 8, 8, 3), "linear")
  style = cells.reshape(16, -1)  # the style knows every colour
  x = jnp.ones((16, 8, 8, 3))
  norm = AdaIN()
  params = norm.init(keys[2], x, style, local_map if local else None)

  def loss(p):
    return jnp.mean(
        (norm.apply(p, x, style, local_map if local else None) - target) ** 2
    )

  params = _fit(loss, params, 400)
  # The best a flat image can do.
  spread = float(jnp.mean(target.var(axis=(1, 2))))
  if local:
    assert loss(params) < 0.01 * spread
  else:
    assert loss(params) >= spread * (1 - 1e-4)


def _local_style_blocks(local_style):
  """The up blocks whose norms hold local projections, for a 32 px tiny generator
  (three up blocks), from the parameters' shapes alone."""
  config = tiny_config("dallex", 32)
  config.model.generator.local_style = local_style
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  shapes = jax.eval_shape(
      lambda k: init_params(objective, k, batch)[0], jax.random.key(0)
  )
  paths = [
      jax.tree_util.keystr(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]
  ]
  return sorted({p.split("'")[3] for p in paths if "'local'" in p})


def test_local_style_counts_up_blocks_from_the_coarsest():
  assert _local_style_blocks(0) == []
  assert _local_style_blocks(2) == ["up_0", "up_1"]
  assert _local_style_blocks(3) == ["up_0", "up_1", "up_2"]
  for bad in (4, -1):
    with pytest.raises(
        ValueError,
        match=r"local_style must be between 0 and 3 .*got " + str(bad),
    ):
      _local_style_blocks(bad)


def test_local_style_starts_as_the_generator_without_it():
  """The local projections start at zero: switched on, the generator draws the
  same images from the same parameters until training moves them."""
  config = tiny_config("dallex", 32)
  batch = tiny_batch(config, 2)
  images = {}
  for local in (0, 3):
    config.model.generator.local_style = local
    objective = build_objective(config)
    g_params = init_params(objective, jax.random.key(0), batch)[0]
    images[local] = _generate(
        objective, g_params, batch["ids"], batch["mask"]
    ).images
  np.testing.assert_allclose(images[3], images[0], atol=1e-6)


def test_layout_loss_needs_the_layout_head_a_known_pool_and_distance():
  config = tiny_config()
  config.model.generator.layout_head = False
  with pytest.raises(ValueError, match="model.generator.layout_head=True"):
    build_objective(config)
  config.model.generator.layout_head = True
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  g_params = init_params(objective, jax.random.key(0), batch)[0]
  out = _generate(objective, g_params, batch["ids"], batch["mask"])
  assert out.layout.shape == (2, 16, 16, 3)  # 4 x 4 tokens, 4 x 4 patches
  config.model.generator.layout_patch = 3
  with pytest.raises(
      ValueError,
      match=r"layout_patch=3: the layout \(4 grid tokens x 3 = 12 px a side\) "
      r"must divide data.resolution=32",
  ):
    build_objective(config)
  config.model.generator.layout_patch = 4
  for key, value in (("layout_pool", "median"), ("layout_distance", "huber")):
    bad = config.copy_and_resolve_references()
    bad.loss[key] = value
    with pytest.raises(ValueError, match=f"loss.{key} must be one of"):
      build_objective(bad)


def test_each_grid_token_guesses_its_own_patch_of_the_layout():
  """layout_patch=2: a 4x4 grid guesses an 8x8 layout, token (i, j) the pixels
  (2i + a, 2j + b); with the head's kernel zeroed every token gives the
  head's bias as its patch, so the layout is that patch tiled."""
  config = tiny_config()
  config.model.generator.update(layout_head=True, layout_patch=2)
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  g_params = init_params(objective, jax.random.key(0), batch)[0]
  head = g_params["params"]["layout"]
  assert head["kernel"].shape[-1] == 2 * 2 * 3
  patch = jnp.arange(12.0).reshape(2, 2, 3)
  head["kernel"] = jnp.zeros_like(head["kernel"])
  head["bias"] = patch.reshape(-1)
  out = _generate(objective, g_params, batch["ids"], batch["mask"])
  np.testing.assert_array_equal(out.layout, jnp.tile(patch, (2, 4, 4, 1)))
  config.model.generator.layout_patch = 0
  with pytest.raises(ValueError, match=r"layout_patch=0: .*be >= 1\)"):
    build_objective(config)
  config.loss.layout = 0.0  # the head alone checks it too
  with pytest.raises(ValueError, match="layout_patch must be >= 1, got 0"):
    init_params(build_objective(config), jax.random.key(0), batch)


@pytest.mark.parametrize("grid_style", [True, False])
def test_without_grid_style_the_grid_reads_the_caption_alone(grid_style):
  """With random (trained-like) parameters the grid tokens (read by the layout
  head) depend on z through style_to_grid and AdaLN; without grid_style they
  do not, and the positions start at unit scale."""
  config = tiny_config()
  config.model.generator.update(layout_head=True, grid_style=grid_style)
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  g_params = init_params(objective, jax.random.key(0), batch)[0]
  positions = float(jnp.std(g_params["params"]["grid_embed"]))
  assert positions == pytest.approx(0.02 if grid_style else 1.0, rel=0.3)
  g_params = trained_like(g_params)
  outs = [
      _generate(
          objective, g_params, batch["ids"], batch["mask"], jax.random.key(k)
      )
      for k in (2, 3)
  ]
  layout_change = float(jnp.max(jnp.abs(outs[0].layout - outs[1].layout)))
  assert (layout_change > 1e-3) if grid_style else (layout_change < 1e-6)
  # z still reaches the image, through grid_norm and the up blocks.
  assert float(jnp.max(jnp.abs(outs[0].images - outs[1].images))) > 1e-3


def test_text_convolutions_see_no_padding_and_reach_their_kernel():
  # One convolution of width 5, and no attention (depth 0).
  text = dict(tiny_config().model.text, depth=0, conv_kernel=5, conv_layers=1)
  encoder = TextEncoder(**text, scan=True, remat=False, dtype=jnp.float32)
  ids, mask = ByteTokenizer(48).encode(["a red circle", "a red circle"])
  params = encoder.init(jax.random.key(0), ids, mask)
  assert "conv_0" in params["params"]
  tokens = encoder.apply(params, ids, mask).tokens
  # Padding: the same caption in a shorter row gives the same tokens.
  short = encoder.apply(params, ids[:, :20], mask[:, :20]).tokens
  np.testing.assert_allclose(short, tokens[:, :20], atol=1e-5)
  # Reach: with no attention (depth 0), changing byte 7 moves tokens 5..9 only.
  changed = ids.copy()
  changed[1, 7] += 1
  moved = np.abs(
      np.asarray(encoder.apply(params, changed, mask).tokens[1] - tokens[1])
  ).max(-1)
  assert set(np.flatnonzero(moved > 1e-6)) == set(range(5, 10))
