"""The generator: text -> conditioning -> style -> Transformer over an image-token
grid with cross-attention to the text -> convolutional upsampling -> image.

    ids, mask --TextEncoder--> tokens [B,L,Dt], sentence [B,Dt]
    sentence, eps --ConditioningAugmentation--> c [B,C]  (+ KL)
    z [B,Z], c --mapping MLP--> w [B,W]
    learned grid [G*G, D] --Transformer (self-attn, cross-attn to tokens) [--layout head]-->
    [B,G,G,D] --upsampling conv blocks (AdaIN(w, grid)), one per doubling--> clip
    --> [B,R,R,3] in [-1,1]

With ``grid_style`` w is also added to the grid tokens and modulates the grid
Transformer (AdaLN), the design before RESULTS.md section 16.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp

from dallex.models.conditioning import Conditioning, ConditioningAugmentation
from dallex.models import cpu_kernels
from dallex.models.layers import Conv, Dtype, Norm, PointwiseConv, TransformerStack, conv
from dallex.models.jitter import colour_jitter
from dallex.models.text_encoder import TextEncoder, TextFeatures


class GeneratorOutput(NamedTuple):
  """images: [B, R, R, 3] in [-1, 1]; text: the encoder's features; cond: the CA
  sample; layout: [B, G, G, 3], the grid tokens' guess of the image pooled
  over each token's square (with ``layout_head``; else None); drawn:
  [B, R, R, 3], the images before the colour jitter (with it; else None)."""

  images: jax.Array
  text: TextFeatures
  cond: Conditioning
  layout: jax.Array | None = None
  drawn: jax.Array | None = None


def num_doublings(resolution: int, start: int) -> int:
  """How many x2 steps lead from ``start`` to ``resolution`` (which must be start * 2^n)."""
  n = int(round(math.log2(resolution / start))) if resolution >= start else -1
  if n < 0 or start * 2**n != resolution:
    raise ValueError(
        f"resolution {resolution} must be {start} times a power of two"
    )
  return n


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling, [B, H, W, C] -> [B, 2H, 2W, C].

  A broadcast and a reshape, so the backward pass is a sum over each 2x2
  block. ``jax.image.resize(..., "nearest")`` gathers, and its backward
  scatters: 4x slower forward and backward on CPU for shapes32's up blocks.
  """
  b, h, w, c = x.shape
  return jnp.broadcast_to(
      x[:, :, None, :, None, :], (b, h, 2, w, 2, c)
  ).reshape(b, 2 * h, 2 * w, c)


class UpsampleConv(nn.Module):
  """``nn.Conv(features, (3, 3))`` applied to ``upsample2x(x)``, on CPU computed
  without the upsampled map (``cpu_kernels.upsample_conv3x3``); its parameters
  (names, shapes, initialisers) are ``nn.Conv``'s, so checkpoints of either
  load into the other."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, Cin] -> [B, 2H, 2W, features]."""
    kernel = self.param(
        "kernel",
        nn.initializers.lecun_normal(),
        (3, 3, x.shape[-1], self.features),
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    if cpu_kernels.active():
      return cpu_kernels.upsample_conv3x3(x, kernel) + bias
    return conv(upsample2x(x), kernel, ((1, 1), (1, 1))) + bias


@jax.custom_vjp
def inward_clip(x: jax.Array) -> jax.Array:
  """clip(x, -1, 1) forward; backward, the gradient passes unless it would push
  a value already outside [-1, 1] further out.

  A tanh output saturates: on the shapes data (mostly black) the generator was
  driven to tanh(-large) = -1 everywhere within 150 steps, where its gradient
  is ~0 and it never recovered. A plain straight-through clip (identity
  backward) keeps the gradient but lets the hidden values drift without bound:
  the shapes32 background reached -82 by step 1,600 and -3,855 by step 2,000,
  the generator's gradient norm grew 500-fold and training diverged. Passing
  only the inward gradient keeps out-of-range values near the edge, where
  one step can bring them back.
  """
  return jnp.clip(x, -1.0, 1.0)


def _inward_clip_fwd(x):
  return jnp.clip(x, -1.0, 1.0), x


def _inward_clip_bwd(x, g):
  # Gradient descent moves x by -g: outward is g > 0 below -1 and g < 0 above 1.
  outward = ((x < -1.0) & (g > 0)) | ((x > 1.0) & (g < 0))
  return (jnp.where(outward, jnp.zeros_like(g), g),)


inward_clip.defvjp(_inward_clip_fwd, _inward_clip_bwd)


class AdaIN(nn.Module):
  """Per-sample, per-channel normalisation modulated by the style vector:
  IN(x) * (1 + scale(w)) + shift(w).

  With ``local`` (a [B, G, G, Dl] map), scale and shift also vary over the
  image: scale(w) + scale_l(local) upsampled bilinearly to x's side, and
  likewise the shift. One global scale and shift per channel can only paint
  every object of a scene alike; read from the grid tokens, which
  cross-attended to the caption, each region can take its own object's colour.
  Both projections start at zero, so the block starts as the identity on IN(x).
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, style: jax.Array, local: jax.Array | None = None
  ) -> jax.Array:
    """x [B, H, W, C], style [B, S], local [B, G, G, Dl] or None -> [B, H, W, C]."""
    x32 = x.astype(jnp.float32)
    zero_dense = lambda name=None: nn.Dense(
        2 * x.shape[-1],
        kernel_init=nn.initializers.zeros,
        dtype=jnp.float32,
        name=name,
    )
    modulation = zero_dense()(style)[:, None, None, :]
    if local is not None:
      local = zero_dense("local")(local.astype(jnp.float32))
      modulation = modulation + jax.image.resize(
          local, (*x.shape[:3], local.shape[-1]), "linear"
      )
    scale, shift = jnp.split(modulation, 2, axis=-1)
    # One pass for both statistics (E[x^2] - E[x]^2, as flax's LayerNorm) and
    # the normalisation folded into the modulation, x * a + b: two reads of x
    # instead of four; at the last up block's size on CPU 2.5x faster forward,
    # 4.6x forward and backward.
    mean = x32.mean(axis=(1, 2), keepdims=True)
    var = jnp.maximum(
        jnp.square(x32).mean(axis=(1, 2), keepdims=True) - jnp.square(mean), 0.0
    )
    a = jax.lax.rsqrt(var + 1e-5) * (1.0 + scale)
    return (x32 * a + (shift - mean * a)).astype(self.dtype)


class UpBlock(nn.Module):
  """x2 nearest upsampling, then two 3x3 convolutions, each followed by
  AdaIN(w, local) and a leaky ReLU, with a 1x1 skip path. The upsampling and
  the first convolution are computed together (``UpsampleConv``)."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, style: jax.Array, local: jax.Array | None = None
  ) -> jax.Array:
    """x [B, H, W, Cin], style [B, S], local [B, G, G, Dl] or None -> [B, 2H, 2W, C]."""
    # A 1x1 convolution commutes with nearest upsampling: applied before it,
    # the skip path does a quarter of the work (3-4x faster forward and
    # backward at shapes32's sizes on CPU) and computes the same values.
    skip = upsample2x(
        PointwiseConv(self.channels, dtype=self.dtype, name="skip")(x)
    )
    convs = (
        UpsampleConv(self.channels, self.dtype, name="conv_0"),
        Conv(self.channels, dtype=self.dtype, name="conv_1"),
    )
    for i, layer in enumerate(convs):
      x = nn.leaky_relu(
          AdaIN(self.dtype, name=f"norm_{i}")(layer(x), style, local), 0.2
      )
    return (x + skip) / jnp.sqrt(2.0).astype(self.dtype)


class Generator(nn.Module):
  """Text-conditional generator (see the module docstring).

  Attributes:
    text_encoder: the generator's own text encoder.
    resolution: R, output side; must be ``grid`` times a power of two.
    z_dim, ca_dim, style_dim: sizes of the noise, the CA sample and the style vector.
    mapping_depth: Dense layers of the mapping MLP.
    grid: G, the side of the image-token grid.
    width, depth, heads, mlp_ratio: the grid Transformer.
    base_channels, min_channels: the first up block has ``base_channels``;
      each further one halves it, down to ``min_channels``.
    conditioning_augmentation: sample c around the caption's mean (off: c = mu).
    local_style: how many up blocks, from the coarsest, have AdaINs that also
      read the grid tokens (see ``AdaIN``), so that their modulation varies
      over the image; 0 none.
    layout_head: a linear head on the grid tokens guesses the image's colours
      pooled over each token's square (``GeneratorOutput.layout``), for
      ``loss.layout``: a short path from the real image to the cross-attention
      that reads the caption.
    layout_patch: P, the side of the patch each grid token guesses: the
      layout is [B, G * P, G * P, 3], the image pooled to that size.
    grid_style: w is added to every grid token and modulates the grid
      Transformer's norms (AdaLN). Off, the grid Transformer reads the caption
      alone and w enters at ``grid_norm`` and the up blocks. On, the part of the
      grid tokens shared by all of them outgrew the part that differs from
      token to token over 5,000-fold in trained shapes32 runs, so the grid barely
      told one cell from another (RESULTS.md section 16).
    colour_jitter: the s.d. of a smooth random gain of each colour channel of
      the images (``dallex.models.jitter``), from the first
      3 colour_jitter_nodes^2 channels of z (which the mapping also reads),
      so that a caption's noise seeds vary its colours as the data does;
      training sees the images before it (``GeneratorOutput.drawn``); 0 off.
    colour_jitter_nodes: the side of its node grid.
  """

  text_encoder: TextEncoder
  resolution: int
  z_dim: int
  ca_dim: int
  style_dim: int
  mapping_depth: int
  grid: int
  width: int
  depth: int
  heads: int
  mlp_ratio: int
  base_channels: int
  min_channels: int
  conditioning_augmentation: bool
  local_style: int
  layout_head: bool
  layout_patch: int
  grid_style: bool
  colour_jitter: float
  colour_jitter_nodes: int
  scan: bool
  remat: bool
  dtype: Dtype

  def stage_channels(self) -> list[int]:
    """Channels of each up block, derived from the resolution."""
    n = num_doublings(self.resolution, self.grid)
    return [
        max(self.min_channels, self.base_channels // 2**i) for i in range(n)
    ]

  @nn.compact
  def __call__(
      self, ids: jax.Array, mask: jax.Array, z: jax.Array, ca_eps: jax.Array
  ) -> GeneratorOutput:
    """ids int32 [B, L], mask bool [B, L], z [B, Z], ca_eps [B, C] -> GeneratorOutput."""
    if z.shape[-1] != self.z_dim:
      raise ValueError(
          f"z has {z.shape[-1]} channels, expected z_dim={self.z_dim}"
      )
    text = self.text_encoder(ids, mask)
    cond = ConditioningAugmentation(
        self.ca_dim, self.conditioning_augmentation, name="conditioning"
    )(text.sentence, ca_eps)
    w = jnp.concatenate([z, cond.c], axis=-1)
    for i in range(self.mapping_depth):
      w = nn.leaky_relu(nn.Dense(self.style_dim, name=f"mapping_{i}")(w), 0.2)

    batch = ids.shape[0]
    # Without grid_style the positions start at unit scale: nothing shared by
    # all tokens drowns them (see the attribute's docstring).
    grid = self.param(
        "grid_embed",
        nn.initializers.normal(0.02 if self.grid_style else 1.0),
        (self.grid * self.grid, self.width),
    )
    x = jnp.broadcast_to(grid[None], (batch, *grid.shape))
    if self.grid_style:
      x = x + nn.Dense(self.width, name="style_to_grid")(w)[:, None, :]
    context = nn.Dense(self.width, dtype=self.dtype, name="text_to_context")(
        text.tokens
    )
    x = TransformerStack(
        self.depth,
        self.heads,
        self.mlp_ratio,
        cross_attention=True,
        scan=self.scan,
        remat=self.remat,
        dtype=self.dtype,
        name="transformer",
    )(x.astype(self.dtype), None, context, mask, w if self.grid_style else None)
    layout = None
    if self.layout_head:
      # Read through a LayerNorm of its own, not the style-modulated grid_norm:
      # the layout is the caption's, and z should not rescale its guess.
      g, p = self.grid, self.layout_patch
      if p < 1:
        raise ValueError(f"layout_patch must be >= 1, got {p}")
      layout = nn.Dense(3 * p * p, dtype=jnp.float32, name="layout")(
          Norm(jnp.float32, name="layout_norm")(x)
      )
      layout = layout.reshape(batch, g, g, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
      layout = layout.reshape(batch, g * p, g * p, 3)
    x = Norm(self.dtype, name="grid_norm")(x, w)
    x = x.reshape(batch, self.grid, self.grid, self.width)
    grid_tokens = x
    stages = self.stage_channels()
    if not 0 <= self.local_style <= len(stages):
      raise ValueError(
          f"model.generator.local_style must be between 0 and {len(stages)} "
          f"(the up blocks at resolution {self.resolution}), got {self.local_style}"
      )
    for i, channels in enumerate(stages):
      local = grid_tokens if i < self.local_style else None
      x = UpBlock(channels, self.dtype, name=f"up_{i}")(x, w, local)
    rgb = inward_clip(PointwiseConv(3, dtype=jnp.float32, name="to_rgb")(x))
    if not self.colour_jitter:
      return GeneratorOutput(rgb, text, cond, layout)
    n = self.colour_jitter_nodes
    if n < 1 or 3 * n * n > self.z_dim:
      raise ValueError(
          "model.generator.colour_jitter reads 3 colour_jitter_nodes^2 "
          f"channels of z: needs colour_jitter_nodes >= 1 and at most z_dim="
          f"{self.z_dim} of them, got colour_jitter_nodes={n}"
      )
    noise = z[:, : 3 * n * n].reshape(batch, n, n, 3)
    jittered = colour_jitter(rgb, noise, self.colour_jitter)
    return GeneratorOutput(jittered, text, cond, layout, rgb)
