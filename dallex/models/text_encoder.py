"""Transformer text encoder: byte ids -> contextual token features and a sentence vector."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dallex.models.layers import Dtype, Norm, TransformerStack
from dallex.text import VOCAB_SIZE


class TextFeatures(NamedTuple):
  """tokens: [B, L, D] per-token features; mask: bool [B, L]; sentence: [B, D]."""

  tokens: jax.Array
  mask: jax.Array
  sentence: jax.Array


class TextEncoder(nn.Module):
  """Token + learned position embeddings, optional residual convolutions over
  neighbouring tokens, pre-LN Transformer blocks with masked self-attention, a
  final LayerNorm, and masked mean pooling.

  The convolutions (``conv_layers`` of width ``conv_kernel``; 0 = none) give
  every byte its phrase's words directly: with byte tokens, a colour is 10-25
  positions from the place it belongs to, and attention over learned absolute
  positions is slow to learn such a fixed reach (RESULTS.md section 14).

  Padding never influences real tokens: padded keys get zero attention weight,
  padded positions enter the convolutions as zeros, and both are left out of
  the pooled sentence vector, so appending PAD tokens changes nothing.
  """

  max_length: int
  width: int
  depth: int
  heads: int
  mlp_ratio: int
  conv_kernel: int
  conv_layers: int
  scan: bool
  remat: bool
  dtype: Dtype
  vocab_size: int = VOCAB_SIZE

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> TextFeatures:
    """ids: int32 [B, L] (L <= max_length); mask: bool [B, L]."""
    if ids.shape[1] > self.max_length:
      raise ValueError(
          f"ids has length {ids.shape[1]} > the encoder's max_length "
          f"{self.max_length}"
      )
    x = nn.Embed(self.vocab_size, self.width, name="token_embed")(ids)
    position = self.param(
        "position_embed",
        nn.initializers.normal(0.02),
        (self.max_length, self.width),
    )
    x = (x + position[: ids.shape[1]]).astype(self.dtype)
    keep = mask[..., None].astype(self.dtype)
    for i in range(self.conv_layers if self.conv_kernel else 0):
      h = Norm(self.dtype, name=f"conv_norm_{i}")(x) * keep
      x = x + nn.Conv(
          self.width,
          (self.conv_kernel,),
          padding="SAME",
          dtype=self.dtype,
          name=f"conv_{i}",
      )(h)
    x = TransformerStack(
        self.depth,
        self.heads,
        self.mlp_ratio,
        scan=self.scan,
        remat=self.remat,
        dtype=self.dtype,
        name="transformer",
    )(x, mask)
    tokens = Norm(jnp.float32, name="final_norm")(x)
    weights = mask.astype(jnp.float32)[..., None]
    sentence = (tokens * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    return TextFeatures(tokens.astype(self.dtype), mask, sentence)
