"""Per-sample noise: sample i's latents come from fold_in(key, i) alone.

So an image depends on its seed and its global index only, never on the batch
size, the batch's other members or the number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def latents(
    key: jax.Array,
    indices: jax.Array,
    z_dim: int,
    ca_dim: int,
    truncation: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Noise z [N, z_dim] and conditioning-augmentation noise eps [N, ca_dim].

  Args:
    key: a PRNG key.
    indices: int [N], the samples' global indices.
    z_dim, ca_dim: sizes.
    truncation: scales both (1 = the training distribution, 0 = the mean image
      of each caption).
  """

  def one(i):
    kz, ke = jax.random.split(jax.random.fold_in(key, i))
    return jax.random.normal(kz, (z_dim,)), jax.random.normal(ke, (ca_dim,))

  z, eps = jax.vmap(one)(jnp.asarray(indices))
  return z * truncation, eps * truncation
