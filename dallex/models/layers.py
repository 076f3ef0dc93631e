"""Building blocks: scaled dot-product attention and convolutions with
nn.Conv's parameters (both on CPU computed by ``cpu_kernels``), pre-LN
Transformer blocks with optional style modulation (AdaLN), and a scanned
stack of them.

Parameters are float32; ``dtype`` is the compute dtype (float32 or bfloat16).
Softmax and normalisation statistics are always computed in float32.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp

from dallex.models import cpu_kernels

Dtype = Any


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Scaled dot-product attention: softmax(q k^T / sqrt(d) + mask) v.

  On CPU ``cpu_kernels.attention``; on GPU and TPU ``fused_attention``.

  Args:
    q: [B, Lq, H, d] queries.
    k, v: [B, Lk, H, d] keys and values.
    mask: bool [B, Lk], True where a key may be attended to. Masked keys get
      exactly zero weight, so padding never influences the output; a row with
      no visible key gives zeros (not an average over padding) and passes
      back no gradient.

  Returns:
    [B, Lq, H, d].
  """
  if cpu_kernels.active():
    return cpu_kernels.attention(q, k, v, mask)
  return fused_attention(q, k, v, mask)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """``dot_product_attention`` by ``jax.nn.dot_product_attention``: cuDNN's
  fused kernel on a GPU in half precision where it takes the shapes, XLA's
  otherwise. Arguments and result as ``dot_product_attention``'s."""
  full = None if mask is None else mask[:, None, None, :]
  out = None
  if _lowers_for_gpu() and q.dtype in (jnp.bfloat16, jnp.float16):
    try:
      out = jax.nn.dot_product_attention(
          q, k, v, mask=full, implementation="cudnn"
      )
    except (ValueError, NotImplementedError, RuntimeError):
      # cuDNN refuses these shapes or this version; XLA's takes any.
      out = None
  if out is None:
    out = jax.nn.dot_product_attention(q, k, v, mask=full, implementation="xla")
  if mask is None:
    return out
  return out * jnp.any(mask, axis=-1)[:, None, None, None].astype(out.dtype)


def _lowers_for_gpu() -> bool:
  """Whether new computations go to a GPU: the default backend's, unless a
  ``jax.default_device`` block (as the benchmark counts FLOPs on the host
  CPU) names another platform."""
  device = jax.config.jax_default_device
  if device is None:
    return jax.default_backend() == "gpu"
  platform = device if isinstance(device, str) else device.platform
  return platform in ("gpu", "cuda", "rocm")


class MultiHeadAttention(nn.Module):
  """Multi-head attention of ``x`` [B, Lq, D] over ``context`` [B, Lk, Dc]
  (``x`` itself if None), keys masked by ``mask`` bool [B, Lk] (or None)."""

  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, context: jax.Array | None, mask: jax.Array | None
  ) -> jax.Array:
    context = x if context is None else context
    width = x.shape[-1]
    if width % self.heads:
      raise ValueError(
          f"width {width} is not divisible by the {self.heads} heads"
      )
    dense = lambda name: nn.DenseGeneral(
        (self.heads, width // self.heads), dtype=self.dtype, name=name
    )
    out = dot_product_attention(
        dense("query")(x), dense("key")(context), dense("value")(context), mask
    )
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(
        out
    )


class PointwiseConv(nn.Module):
  """``nn.Conv(features, (1, 1))``, computed as a matrix product over the
  channels: the same parameters (names, shapes, initialisers), so checkpoints
  of either load into the other, and the same values. XLA:CPU runs a 1x1
  convolution 2-4x slower than the equal dot at the generator's sizes (its
  ``to_rgb`` at [64, 32, 32, 32] -> 3 channels: 1.1 ms against 0.27 ms)."""

  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., Cin] -> [..., features]."""
    kernel = self.param(
        "kernel", self.kernel_init, (1, 1, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return x @ kernel[0, 0] + bias


def conv(
    x: jax.Array, kernel: jax.Array, padding: cpu_kernels.Padding
) -> jax.Array:
  """Stride-1 convolution, x [B, H, W, Cin] * kernel [kh, kw, Cin, Cout] with
  ``padding`` ((top, bottom), (left, right)): XLA's, or on CPU its form with
  batch-chunked kernel gradients (``cpu_kernels.conv2d``)."""
  if cpu_kernels.active():
    return cpu_kernels.conv2d(x, kernel, padding)
  return cpu_kernels.xla_conv(x, kernel, padding)


class Conv(nn.Module):
  """``nn.Conv(features, kernel_size)`` with SAME padding and stride 1, computed
  by ``conv``: the same parameters (names, shapes, initialisers), so
  checkpoints of either load into the other, and the same values."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, Cin] -> [B, H, W, features]."""
    kernel = self.param(
        "kernel",
        self.kernel_init,
        (*self.kernel_size, x.shape[-1], self.features),
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    padding = tuple(((k - 1) // 2, k // 2) for k in self.kernel_size)
    return conv(x, kernel, padding) + bias


class Mlp(nn.Module):
  """Two-layer GELU feed-forward network, ``ratio`` times wider inside."""

  ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.gelu(nn.Dense(width * self.ratio, dtype=self.dtype)(x))
    return nn.Dense(width, dtype=self.dtype)(x)


class Norm(nn.Module):
  """LayerNorm in float32, modulated by a style vector when one is given (AdaLN):
  LN(x) * (1 + scale(w)) + shift(w)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, style: jax.Array | None = None) -> jax.Array:
    if style is None:
      return nn.LayerNorm(dtype=jnp.float32)(x).astype(self.dtype)
    y = nn.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32)(x)
    # Zero-initialised so every block starts as a plain (unmodulated) LayerNorm.
    scale, shift = jnp.split(
        nn.Dense(
            2 * x.shape[-1],
            kernel_init=nn.initializers.zeros,
            dtype=jnp.float32,
        )(style),
        2,
        axis=-1,
    )
    return (y * (1.0 + scale[:, None, :]) + shift[:, None, :]).astype(
        self.dtype
    )


class TransformerBlock(nn.Module):
  """Pre-LN block: self-attention, optional cross-attention to a context, MLP.

  With ``style`` [B, W] every norm becomes AdaLN, so the style vector modulates
  every sub-layer (the generator); without it, plain LayerNorm (the text encoder).
  """

  heads: int
  mlp_ratio: int = 4
  cross_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      mask: jax.Array | None = None,
      context: jax.Array | None = None,
      context_mask: jax.Array | None = None,
      style: jax.Array | None = None,
  ) -> jax.Array:
    """x: [B, L, D]; mask: bool [B, L]; context: [B, Lc, Dc]; context_mask: bool [B, Lc]."""
    x = x + MultiHeadAttention(self.heads, self.dtype, name="self_attention")(
        Norm(self.dtype)(x, style), None, mask
    )
    if self.cross_attention:
      x = x + MultiHeadAttention(
          self.heads, self.dtype, name="cross_attention"
      )(Norm(self.dtype)(x, style), context, context_mask)
    return x + Mlp(self.mlp_ratio, self.dtype)(Norm(self.dtype)(x, style))


class _ScanStep(TransformerBlock):
  """TransformerBlock with nn.scan's (carry, inputs) -> (carry, outputs) signature."""

  def __call__(self, x, mask, context, context_mask, style):
    return super().__call__(x, mask, context, context_mask, style), None


class TransformerStack(nn.Module):
  """``depth`` TransformerBlocks, scanned (``nn.scan``) so compile time does not
  grow with depth, optionally rematerialised to trade compute for memory.

  Scanned and unscanned stacks compute the same function; their parameters are
  laid out differently (stacked on a leading depth axis when scanned).
  """

  depth: int
  heads: int
  mlp_ratio: int = 4
  cross_attention: bool = False
  scan: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *inputs: jax.Array | None) -> jax.Array:
    """x [B, L, D] and, in TransformerBlock's order, its other arguments
    (mask, context, context_mask, style; missing ones None) -> [B, L, D]."""
    inputs = (*inputs, *(None,) * (4 - len(inputs)))
    kwargs = dict(
        heads=self.heads,
        mlp_ratio=self.mlp_ratio,
        cross_attention=self.cross_attention,
        dtype=self.dtype,
    )
    if not self.scan:
      block_cls = nn.remat(TransformerBlock) if self.remat else TransformerBlock
      for i in range(self.depth):
        x = block_cls(**kwargs, name=f"block_{i}")(x, *inputs)
      return x
    step_cls = nn.remat(_ScanStep) if self.remat else _ScanStep
    stack = nn.scan(
        step_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 4,
        length=self.depth,
    )
    x, _ = stack(**kwargs, name="blocks")(x, *inputs)
    return x
