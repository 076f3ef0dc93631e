import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_batch, tiny_config
from dallex.models.jitter import colour_jitter
from dallex.objective import build_objective, init_params
from dallex.train import configured_step, create_train_state, make_optimizers


def test_the_gain_is_each_nodes_own_over_its_square_and_smooth_between():
  images = jnp.zeros((1, 16, 16, 3))  # mid-grey: 0.5 in [0, 1]
  noise = jnp.zeros((1, 4, 4, 3)).at[0, 0, 0].set(jnp.array([1.0, -1.0, 2.0]))
  out = colour_jitter(images, noise, 0.1)
  # The node's square is scaled by 1.1 / 0.9 / 1.2 per channel, in [0, 1].
  np.testing.assert_allclose(
      out[0, :2, :2], [[[0.1, -0.1, 0.2]] * 2] * 2, atol=1e-6
  )
  # The far corner keeps its colour; between nodes the gain changes by at
  # most a quarter of one node's step per pixel.
  np.testing.assert_allclose(out[0, 8:, 8:], 0.0, atol=1e-7)
  assert float(jnp.abs(jnp.diff(out, axis=1)).max()) <= 0.25 * 0.2 + 1e-6
  # Black stays black and the result stays in range.
  black = colour_jitter(-jnp.ones((1, 8, 8, 3)), 10 * noise, 0.5)
  np.testing.assert_array_equal(black, -1.0)
  white = colour_jitter(jnp.ones((1, 8, 8, 3)), 10 * noise, 0.5)
  assert float(white.max()) == 1.0 and float(white.min()) >= -1.0


def _objective(colour=0.0, nodes=2):
  config = tiny_config()
  config.model.z_dim = 16
  config.model.generator.update(colour_jitter=colour, colour_jitter_nodes=nodes)
  return config, build_objective(config)


def test_the_sampler_jitters_colours_by_its_noise_and_training_never_sees_it():
  config, objective = _objective(colour=0.1)
  plain_config, plain = _objective()
  batch = tiny_batch(config, 4)
  params = init_params(plain, jax.random.key(0), batch)[0]
  z = jax.random.normal(jax.random.key(1), (4, 16))
  ca = jnp.zeros((4, config.model.ca_dim))
  apply = lambda o, z: jax.jit(o.generator.apply)(
      params, batch["ids"], batch["mask"], z, ca
  )
  out, without = apply(objective, z), apply(plain, z)
  assert without.drawn is None
  # (Two programs: XLA may fuse the same arithmetic differently.)
  np.testing.assert_allclose(out.drawn, without.images, atol=1e-5)
  # The gain is each channel's in [0, 1], from the first 12 channels of z.
  expected = colour_jitter(out.drawn, z[:, :12].reshape(4, 2, 2, 3), 0.1)
  np.testing.assert_allclose(out.images, expected, atol=1e-6)
  assert float(jnp.abs(out.images - out.drawn).max()) > 1e-2
  # The objective's images are the drawn ones, so a train step is the same
  # step to the bit with and without the jitter.
  np.testing.assert_array_equal(
      objective.generate(params, batch, jax.random.key(2)).images,
      plain.generate(params, batch, jax.random.key(2)).images,
  )
  states = []
  for o, c in ((objective, config), (plain, plain_config)):
    g_tx, d_tx = make_optimizers(c.optim)
    state = create_train_state(o, g_tx, d_tx, jax.random.key(0), batch)
    step = jax.jit(configured_step(c, o, g_tx, d_tx))
    states.append(step(state, batch)[0])
  jax.tree.map(np.testing.assert_array_equal, states[0], states[1])
  with pytest.raises(ValueError, match=r"reads 3 colour_jitter_nodes\^2"):
    _objective(colour=0.1, nodes=3)[1].generator.init(
        jax.random.key(0), batch["ids"], batch["mask"], z, ca
    )
