"""Conditioning augmentation: the seed article's VAE over the text.

The sentence vector is mapped to a Gaussian q(c | text) = N(mu, diag(exp(logvar)))
and the generator sees a reparameterised sample c = mu + exp(logvar / 2) * eps,
with KL(q || N(0, I)) in the generator's loss (StackGAN's conditioning
augmentation). The noise ``eps`` is an input, not drawn inside, so the caller
decides where randomness comes from: eps = 0 gives the deterministic mean.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class Conditioning(NamedTuple):
  """c: [B, C] the sample; mu, logvar: [B, C] the posterior's parameters."""

  c: jax.Array
  mu: jax.Array
  logvar: jax.Array


class ConditioningAugmentation(nn.Module):
  """sentence [B, D], eps [B, C] -> Conditioning.

  ``augment=False`` (for ablations) returns c = mu: the same projection, no noise.
  """

  dim: int
  augment: bool = True

  @nn.compact
  def __call__(self, sentence: jax.Array, eps: jax.Array) -> Conditioning:
    if eps.shape[-1] != self.dim:
      raise ValueError(f"eps has {eps.shape[-1]} channels, expected {self.dim}")
    mu, logvar = jnp.split(
        nn.Dense(2 * self.dim, dtype=jnp.float32)(sentence), 2, axis=-1
    )
    # Bounded log-variance keeps exp() finite early in training.
    logvar = jnp.clip(logvar, -10.0, 10.0)
    if not self.augment:
      return Conditioning(mu, mu, logvar)
    return Conditioning(mu + jnp.exp(0.5 * logvar) * eps, mu, logvar)
