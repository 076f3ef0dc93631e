"""The sampler's colour jitter: a smooth random gain of each colour channel.

The shapes data draws each object's colour with a jitter of about 7 of 255
(s.d.); the generator, taught by an L1 toward each caption's real image,
paints a caption's objects in nearly the same colour under every noise seed
(about 0.55 of the data's spread, RESULTS.md 53). ``colour_jitter`` scales
each channel by 1 + sd * n, n from the noise at N x N nodes, bilinear
between them: objects in different parts of the image vary on their own.
Training never sees it (``dallex.objective``): it is a fixed random layer
at the sampler's end, not learned.

    images = colour_jitter(drawn, noise, sd)   # drawn [B, R, R, 3], noise [B, N, N, 3]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def colour_jitter(images: jax.Array, noise: jax.Array, sd: float) -> jax.Array:
  """images [B, R, R, 3] in [-1, 1], noise [B, N, N, 3] ~ N(0, 1) ->
  [B, R, R, 3]: each channel, as a value in [0, 1], times 1 + sd * the noise
  interpolated bilinearly from the nodes (each node at the centre of its
  square of the image, edges held), clipped to the range."""
  b, r, _, c = images.shape
  field = jax.image.resize(
      noise.astype(jnp.float32), (b, r, r, c), method="linear", antialias=False
  )
  return jnp.clip((images + 1.0) * (1.0 + sd * field) - 1.0, -1.0, 1.0)
