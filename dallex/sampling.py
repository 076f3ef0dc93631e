"""Sampling: a pure, jitted function of parameters, captions and a key.

Sample i's noise comes from fold_in(key, start_index + i), so an image depends
on its seed and global index only, not on the batch size or device count.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dallex import noise


@functools.partial(jax.jit, static_argnames=("generator", "z_dim", "ca_dim"))
def sample(generator: nn.Module, params, ids: jax.Array, mask: jax.Array, key: jax.Array, *,
           z_dim: int, ca_dim: int, truncation: float | jax.Array = 1.0,
           start_index: int | jax.Array = 0) -> jax.Array:
  """Images [N, R, R, 3] in [-1, 1] for captions ids/mask [N, L].

  Args:
    generator: the generator module (static).
    params: its parameters (use the EMA ones).
    key: the seed's key.
    z_dim, ca_dim: noise sizes (static).
    truncation: scales the noise and the conditioning-augmentation sample.
    start_index: the global index of the first caption.
  """
  index = start_index + jnp.arange(ids.shape[0])
  z, eps = noise.latents(key, index, z_dim, ca_dim, truncation)
  return generator.apply(params, ids, mask, z, eps).images


def pad_rows(x: np.ndarray, size: int, fill: np.ndarray | None = None) -> np.ndarray:
  """[n, ...] -> [size, ...] (n <= size), the new rows copies of ``fill`` [1, ...]
  (default: the first row). A jitted function then sees one batch shape and
  compiles once; the caller drops the padding from its output."""
  fill = x[:1] if fill is None else fill
  return np.concatenate([x, np.repeat(fill, size - len(x), 0)])
