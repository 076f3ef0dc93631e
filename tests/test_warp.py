import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_batch, tiny_config
from dallex.models.warp import displacement_field, warp
from dallex.objective import build_objective, init_params


def _features(b=2, s=8, c=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, s, s, c))


def test_a_whole_pixel_field_shifts_the_map_and_a_half_pixel_one_averages():
  x = _features()
  zero = jnp.zeros((2, 8, 8, 2))
  np.testing.assert_allclose(warp(x, zero), x, atol=1e-6)
  right_down = zero.at[..., 0].set(1.0).at[..., 1].set(2.0)
  moved = warp(x, right_down)
  # Content moves down 1 and right 2; the edge it left repeats the border.
  np.testing.assert_allclose(moved[:, 1:, 2:], x[:, :-1, :-2], atol=1e-6)
  np.testing.assert_allclose(moved[:, 1:, 0], x[:, :-1, 0], atol=1e-6)
  half = warp(x, zero.at[..., 1].set(0.5))
  np.testing.assert_allclose(
      half[:, :, 1:], (x[:, :, 1:] + x[:, :, :-1]) / 2, atol=1e-6
  )


def test_the_field_is_smooth_between_nodes_and_each_region_moves_alone():
  nodes = jnp.zeros((1, 4, 4, 2)).at[0, 0, 0].set(jnp.array([1.0, -1.0]))
  field = displacement_field(nodes, 16)
  assert field.shape == (1, 16, 16, 2)
  # The node's own square holds its value; the far corner does not move.
  np.testing.assert_allclose(field[0, :2, :2], [[[1.0, -1.0]] * 2] * 2)
  np.testing.assert_allclose(field[0, 8:, 8:], 0.0)
  # Between the nodes it changes by at most one node step over 4 pixels.
  assert float(jnp.abs(jnp.diff(field, axis=1)).max()) <= 0.25 + 1e-6


def _generate(objective, params, batch, z):
  ca = jnp.zeros((z.shape[0], objective.generator.ca_dim))
  return objective.generator.apply(params, batch["ids"], batch["mask"], z, ca)


def test_the_warp_reads_its_own_noise_and_moves_what_the_rest_draws():
  config = tiny_config()
  n = config.model.generator.warp_nodes = 3
  config.model.z_dim = 2 * n * n + 8
  config.model.generator.warp = 1.0
  objective = build_objective(config)
  batch = tiny_batch(config, 2)
  params = init_params(objective, jax.random.key(0), batch)[0]
  z = jax.random.normal(jax.random.key(1), (2, config.model.z_dim))
  base = _generate(objective, params, batch, z)
  other = z.at[:, 8:].set(jax.random.normal(jax.random.key(2), (2, 2 * n * n)))
  moved = _generate(objective, params, batch, other)
  assert float(jnp.abs(moved.images - base.images).max()) > 1e-3
  # Zero warp noise is the generator without the warp reading the first 8
  # channels: the mapping does not see the warp's noise.
  flat = _generate(objective, params, batch, z.at[:, 8:].set(0.0))
  config.model.generator.warp = 0.0
  config.model.z_dim = 8
  plain = build_objective(config)
  np.testing.assert_allclose(
      flat.images, _generate(plain, params, batch, z[:, :8]).images, atol=1e-5
  )
  config.model.generator.warp = 1.0
  with pytest.raises(
      ValueError, match=r"warp needs warp_nodes >= 1 and z_dim > 2"
  ):
    init_params(build_objective(config), jax.random.key(0), batch)
