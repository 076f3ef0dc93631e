"""Convolutions and attention computed in forms that run faster on XLA:CPU,
used on CPU only.

The convolutions compute what XLA's convolution computes (the same values
up to float rounding, the same derivatives to any order); the layers call
them when the computation is traced for the CPU backend (``active()``) and
call XLA's convolution directly on GPU and TPU, where none of the
measurements below was made:

* ``conv2d``: a stride-1 convolution whose kernel gradient is summed over
  chunks of the batch. XLA:CPU's kernel-gradient convolution slows down
  sharply with the size of its operands; in chunks of about 2^17 input
  elements it ran up to 3x faster (docs/performance.md), the whole shapes32
  train step 7% faster.
* ``upsample_conv3x3``: nearest x2 upsampling then a 3x3 convolution, as four
  2x2 convolutions of the input with folded taps: 16 instead of 36
  multiply-adds per input pixel and channel pair, 2x faster forward and
  backward at shapes32's last up block on CPU.
* ``attention``: softmax attention normalised after the product with the
  values, which halves the forward time of the text encoder on CPU; other
  backends use ``jax.nn.dot_product_attention`` (``layers.fused_attention``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]

# Input elements (H * W * Cin) per batch chunk of a kernel gradient: the
# fastest, or within 12% of it, over batch 32-64, 8-32 px and 16-64 channels.
_KERNEL_GRAD_CHUNK = 2**17


_OFF = contextvars.ContextVar("dallex_cpu_kernels_off", default=False)


def active() -> bool:
  """Whether the layers use these kernels: the default backend is XLA:CPU
  and no ``off()`` block is open."""
  return jax.default_backend() == "cpu" and not _OFF.get()


@contextlib.contextmanager
def off():
  """Within this block the layers trace XLA's own forms, as on GPU and TPU:
  for counting a model's FLOPs the same way on every backend (the folded
  upsampling does fewer multiply-adds than the convolution it computes)."""
  token = _OFF.set(True)
  try:
    yield
  finally:
    _OFF.reset(token)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """``layers.dot_product_attention`` for XLA:CPU, with the softmax normalised
  after the product with ``v``: (exp(s - max s) v) / sum exp(s - max s)
  divides [B, H, Lq, d] rather than [B, H, Lq, Lk] and keeps the max out of
  the gradient (it cancels), so fewer full-size elementwise passes run. The
  mask is an additive bias [B, 1, 1, Lk], never broadcast to full size;
  float32's lowest value underflows in exp, so masked keys weigh exactly 0.

  Args and result as ``layers.dot_product_attention``: q [B, Lq, H, d],
  k, v [B, Lk, H, d], mask bool [B, Lk] -> [B, Lq, H, d].
  """
  q = q / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if mask is not None:
    logits = (
        logits
        + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    )
  weights = jnp.exp(
      logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  )
  out = jnp.einsum("bhqk,bkhd->bhqd", weights.astype(v.dtype), v).astype(
      jnp.float32
  )
  out = out / weights.sum(axis=-1, keepdims=True)
  if mask is not None:
    out = out * jnp.any(mask, axis=-1)[:, None, None, None]
  return out.astype(v.dtype).transpose(0, 2, 1, 3)


def xla_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
  """XLA's stride-1 convolution, x [B, H, W, Cin] * kernel [kh, kw, Cin, Cout]."""
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _by_chunks(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
  """conv(x, kernel) over chunks of the batch of about 2^17 input elements
  each (8 images at 32 px and 16 channels), concatenated: the same values,
  and its transpose, the kernel gradient, is a sum over the chunks."""
  size = max(1, _KERNEL_GRAD_CHUNK // math.prod(x.shape[1:]))
  if size >= x.shape[0]:
    return xla_conv(x, kernel, padding)
  return jnp.concatenate(
      [
          xla_conv(x[i : i + size], kernel, padding)
          for i in range(0, x.shape[0], size)
      ]
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
  """``xla_conv(x, kernel, padding)`` whose kernel gradient is summed over
  chunks of the batch (``_by_chunks``); ``padding`` is ((top, bottom), (left,
  right)). The same values and derivatives, forward and reverse, to any order.
  """
  return xla_conv(x, kernel, padding)


def _conv2d_jvp(padding, primals, tangents):
  """d conv(x, k) = conv(dx, k) + conv(x, dk); reverse mode transposes the
  second term, taken by chunks, into the chunked kernel gradient."""
  x, kernel = primals
  dx, dkernel = tangents
  y = conv2d(x, kernel, padding)
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(conv2d(dx, kernel, padding))
  if not isinstance(dkernel, SymbolicZero):
    terms.append(_by_chunks(x, dkernel, padding))
  return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _fold_taps(kernel: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """A 3x3 kernel's 3 taps along ``axis`` folded to the 2 that each output
  phase of nearest x2 upsampling then the convolution sees.

  An even output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = input rows
  i-1, i, i: taps (k0, k1, k2) act on input rows (i-1, i) as (k0, k1 + k2).
  An odd row 2i+1 reads input rows i, i, i+1: on (i, i+1) as (k0 + k1, k2).
  Sums of slices, not a product with a 0/1 matrix: a matmul of that shape
  costs more than the convolution itself at batch 1.
  """
  k0, k1, k2 = (jnp.take(kernel, i, axis) for i in range(3))
  return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)


def upsample_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv3x3(nearest_upsample2x(x), kernel) with SAME padding,
  x [B, H, W, Cin], kernel [3, 3, Cin, Cout] -> [B, 2H, 2W, Cout].

  Each of the four output phases (row and column parity) is a 2x2
  convolution of the input itself with taps folded from ``kernel``
  (``_fold_taps``), and no 4x larger upsampled input is made. Zero padding
  agrees too: a padded upsampled row is a padded input row.
  """
  b, h, w, _ = x.shape
  rows = []
  for a, row_kernel in enumerate(_fold_taps(kernel, 0)):
    cols = []
    for c, k in enumerate(_fold_taps(row_kernel, 1)):
      # Phase 0 reads (i-1, i): pad before; phase 1 reads (i, i+1): pad after.
      cols.append(conv2d(x, k, ((1 - a, a), (1 - c, c))))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (column phase), Cout]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])
