"""A smooth random displacement of feature maps, driven by part of the noise.

A caption fixes where the generator's grid tokens put its objects; the noise
reaches the image only through global styles, so a caption's noise seeds
draw its objects in nearly the same place (RESULTS.md 33, 36). The data
jitters each object by a fraction of a pixel to a pixel. ``warp`` moves a
feature map by a displacement field made from noise at G x G nodes and
interpolated between them: smooth over one object, different for objects in
different parts of the image.

    field = displacement_field(noise, size)   # noise [B, G, G, 2] -> [B, S, S, 2]
    moved = warp(features, field)             # features [B, S, S, C]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def displacement_field(nodes: jax.Array, size: int) -> jax.Array:
  """nodes [B, G, G, 2] -> [B, size, size, 2]: bilinear between node values,
  each node at the centre of its square of the image (edges held)."""
  b, g, _, _ = nodes.shape
  return jax.image.resize(
      nodes, (b, size, size, 2), method="linear", antialias=False
  )


def warp(features: jax.Array, field: jax.Array) -> jax.Array:
  """features [B, H, W, C], field [B, H, W, 2] (dy, dx in pixels) ->
  [B, H, W, C]: out[y, x] = features at (y - dy, x - dx), bilinear, edges
  clamped. A positive dx moves the content right."""
  b, h, w, c = features.shape
  ys, xs = jnp.meshgrid(
      jnp.arange(h, dtype=jnp.float32),
      jnp.arange(w, dtype=jnp.float32),
      indexing="ij",
  )
  sy = jnp.clip(ys[None] - field[..., 0], 0, h - 1)
  sx = jnp.clip(xs[None] - field[..., 1], 0, w - 1)
  y0 = jnp.clip(jnp.floor(sy), 0, h - 2).astype(jnp.int32)
  x0 = jnp.clip(jnp.floor(sx), 0, w - 2).astype(jnp.int32)
  fy = (sy - y0)[..., None].astype(features.dtype)
  fx = (sx - x0)[..., None].astype(features.dtype)
  flat = features.reshape(b, h * w, c)

  def at(y, x):
    index = (y * w + x).reshape(b, h * w, 1)
    return jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w, c)

  top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
  bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  return top * (1 - fy) + bottom * fy
