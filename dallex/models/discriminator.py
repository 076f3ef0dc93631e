"""The matching-aware discriminator: convolutional features, an unconditional
logit, a text projection term, and an image embedding for the contrastive loss.

    images [B,R,R,3] --stem + down blocks (features f1..fk, exposed for feature
    matching)--> regions r [B,N,C] (the final 4x4 map) --> h [B,Dh]
    logit = psi(h) + <P sentence, h>         (projection discriminator)
    img_emb = E_i h, txt_emb = E_t sentence  (contrastive "encoder loss")

The text it reads comes from a small TextEncoder of its own, trained on real
pairs through the matching and contrastive heads (like CLIP), so what D
matches against is not a target that G itself moves.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dallex.losses import l2_normalize
from dallex.models.generator import num_doublings
from dallex.models.layers import Conv, Dtype, PointwiseConv
from dallex.models.text_encoder import TextEncoder, TextFeatures

# He initialisation keeps activations at unit scale through the leaky-ReLU
# trunk; Flax's default (LeCun) about halves their variance at every layer.
_HE = nn.initializers.he_normal()

# Final feature map side: down blocks halve the image until it is this small.
FINAL_SIDE = 4


class Judgement(NamedTuple):
  """logit: [B] conditional (matching-aware) logit; logit_uncond: [B];
  img_emb, txt_emb: [B, E] unit-norm embeddings; logit_scale: scalar, the
  contrastive inverse temperature (exp of a learned log)."""

  logit: jax.Array
  logit_uncond: jax.Array
  img_emb: jax.Array
  txt_emb: jax.Array
  logit_scale: jax.Array


class DownBlock(nn.Module):
  """Two 3x3 convolutions with leaky ReLU, then 2x2 average pooling, with a
  pooled 1x1 skip path (residual)."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # A 1x1 convolution commutes with average pooling: applied after it, the
    # skip path does a quarter of the work and computes the same values.
    skip = PointwiseConv(self.channels, _HE, self.dtype, name="skip")(
        nn.avg_pool(x, (2, 2), (2, 2))
    )
    for i in range(2):
      x = nn.leaky_relu(
          Conv(
              self.channels, kernel_init=_HE, dtype=self.dtype, name=f"conv_{i}"
          )(x),
          0.2,
      )
    return (nn.avg_pool(x, (2, 2), (2, 2)) + skip) / jnp.sqrt(2.0).astype(
        self.dtype
    )


class _Trunk(nn.Module):
  """images [B, R, R, 3] -> (h [B, Dh], [feature map of each down block])."""

  stage_channels: tuple[int, ...]
  base_channels: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    conv = functools.partial(Conv, kernel_init=_HE, dtype=self.dtype)
    x = nn.leaky_relu(
        conv(self.base_channels, name="stem")(images.astype(self.dtype)), 0.2
    )
    feats = []
    for i, channels in enumerate(self.stage_channels):
      x = DownBlock(channels, self.dtype, name=f"down_{i}")(x)
      feats.append(x)
    x = nn.leaky_relu(conv(x.shape[-1], name="final_conv")(x), 0.2)
    h = nn.leaky_relu(
        nn.Dense(
            self.hidden, kernel_init=_HE, dtype=jnp.float32, name="to_hidden"
        )(x.reshape(x.shape[0], -1).astype(jnp.float32)),
        0.2,
    )
    return h, feats


class _Heads(nn.Module):
  """h [B, Dh], TextFeatures -> Judgement."""

  hidden: int
  embed_dim: int
  init_logit_scale: float

  @nn.compact
  def __call__(self, h: jax.Array, text: TextFeatures) -> Judgement:
    sentence = text.sentence
    logit_uncond = nn.Dense(1, name="uncond")(h)[:, 0]
    projection = nn.Dense(self.hidden, name="text_projection")(sentence)
    logit = logit_uncond + jnp.sum(h * projection, axis=-1) / jnp.sqrt(
        float(self.hidden)
    )
    img_emb = l2_normalize(nn.Dense(self.embed_dim, name="image_embed")(h))
    txt_emb = l2_normalize(
        nn.Dense(self.embed_dim, name="text_embed")(sentence)
    )
    log_scale = self.param(
        "log_logit_scale",
        nn.initializers.constant(jnp.log(self.init_logit_scale)),
        (),
    )
    return Judgement(logit, logit_uncond, img_emb, txt_emb, jnp.exp(log_scale))


class Discriminator(nn.Module):
  """See the module docstring. Methods: ``encode_text``, ``features``, ``heads``
  and ``__call__`` (all three), so a train step can encode captions once and
  judge real, generated and mismatched pairs from shared pieces.

  Attributes:
    resolution: R of the images it judges.
    base_channels, max_channels: the stem and the first down block have
      ``base_channels``; each further block doubles it, up to ``max_channels``.
      (Doubling already in the first block, at full resolution, tripled the
      cost of D's features for shapes32: 89 -> 30 ms at batch 32 on 2 cores.)
    hidden: Dh, the width of h.
    embed_dim: E, the contrastive embedding size.
    text_encoder: D's own text encoder.
    dtype: the compute dtype.
    init_logit_scale: initial contrastive inverse temperature (CLIP: 1/0.07).
  """

  resolution: int
  base_channels: int
  max_channels: int
  hidden: int
  embed_dim: int
  text_encoder: TextEncoder
  dtype: Dtype
  init_logit_scale: float = 1.0 / 0.07

  def setup(self):
    n = num_doublings(self.resolution, FINAL_SIDE)
    stages = tuple(
        min(self.max_channels, self.base_channels * 2**i) for i in range(n)
    )
    self.trunk = _Trunk(stages, self.base_channels, self.hidden, self.dtype)
    self.head = _Heads(self.hidden, self.embed_dim, self.init_logit_scale)

  def encode_text(self, ids: jax.Array, mask: jax.Array) -> TextFeatures:
    """ids, mask [B, L] -> TextFeatures (tokens [B, L, Dt], sentence [B, Dt]) from
    D's own text encoder."""
    return self.text_encoder(ids, mask)

  def features(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images [B, R, R, 3] -> (h [B, Dh], [feature maps of each down block])."""
    if images.shape[1:] != (self.resolution, self.resolution, 3):
      raise ValueError(
          f"images must be [B, {self.resolution}, {self.resolution}, 3], "
          f"got {images.shape}"
      )
    return self.trunk(images)

  def heads(self, h: jax.Array, text: TextFeatures) -> Judgement:
    """The judgement of each (image features h [B, Dh], caption) pair, row by row."""
    return self.head(h, text)

  def __call__(
      self, images: jax.Array, ids: jax.Array, mask: jax.Array
  ) -> tuple[Judgement, list[jax.Array]]:
    """Judges image-text pairs [B, R, R, 3], [B, L]."""
    text = self.encode_text(ids, mask)
    h, feats = self.features(images)
    return self.heads(h, text), feats
