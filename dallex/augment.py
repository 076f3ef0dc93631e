"""Differentiable augmentation of what the discriminator sees (DiffAugment).

With a few thousand training images D can learn them by heart within the
steps a short run takes, and then tells G little that generalises. Moving
every image D judges, real and generated alike, by a random translation and
blanking a random square of it keeps D from reading pixels at fixed places;
the operations are differentiable, so G's gradient passes through them.
Neither changes a colour, which captions name.

    images = augment(images, key, "translation,cutout")   # [B, R, R, C] -> same
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# The shares of the image side that DiffAugment uses: shifts of up to 1/8
# of it each way, a blanked square of half of it.
TRANSLATION = 0.125
CUTOUT = 0.5


def translation(images: jax.Array, key: jax.Array) -> jax.Array:
  """Each image [B, R, R, C] moved by its own whole-pixel shift of up to
  R / 8 each way (0 where it moved in from outside)."""
  b, h, w, _ = images.shape
  reach = (int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5))
  shift = jax.random.randint(
      key, (b, 2), -jnp.array(reach), jnp.array(reach) + 1
  )
  padded = jnp.pad(images, ((0, 0), (reach[0],) * 2, (reach[1],) * 2, (0, 0)))

  def crop(image, s):
    start = (reach[0] - s[0], reach[1] - s[1], 0)
    return jax.lax.dynamic_slice(image, start, (h, w, images.shape[-1]))

  return jax.vmap(crop)(padded, shift)


def cutout(images: jax.Array, key: jax.Array) -> jax.Array:
  """Each image [B, R, R, C] with a square of side R / 2 set to 0, its centre
  anywhere in the image (the square clipped at the edges)."""
  b, h, w, _ = images.shape
  size = (int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5))
  centre = jax.random.randint(key, (b, 2), 0, jnp.array([h, w]))
  y = jnp.arange(h)[None, :, None]
  x = jnp.arange(w)[None, None, :]
  top = centre[:, 0, None, None] - size[0] // 2
  left = centre[:, 1, None, None] - size[1] // 2
  inside = (y >= top) & (y < top + size[0]) & (x >= left) & (x < left + size[1])
  return jnp.where(inside[..., None], 0, images).astype(images.dtype)


OPERATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
  """``"translation,cutout"`` -> its operations in order ("" -> none).

  Raises:
    ValueError: an operation that ``OPERATIONS`` does not have.
  """
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = [n for n in names if n not in OPERATIONS]
  if unknown:
    raise ValueError(
        f"loss.augment={policy!r}: unknown {unknown}; the operations are "
        f"{sorted(OPERATIONS)}, comma-separated"
    )
  return names


def augment(images: jax.Array, key: jax.Array, policy: str) -> jax.Array:
  """``images`` [B, R, R, C] through the policy's operations, each with its
  own draw per image from ``key``; unchanged when the policy is empty."""
  for i, name in enumerate(parse_policy(policy)):
    images = OPERATIONS[name](images, jax.random.fold_in(key, i))
  return images
