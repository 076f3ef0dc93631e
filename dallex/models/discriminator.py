"""The matching-aware discriminator: convolutional features, an unconditional
logit, a text projection term, and an image embedding for the contrastive loss.

    images [B,R,R,3] --stem + down blocks (features f1..fk, exposed for feature
    matching)--> h [B,Dh]
    logit = psi(h) + <P sentence, h>         (projection discriminator)
    img_emb = E_i h, txt_emb = E_t sentence  (contrastive "encoder loss")

The text it reads: by default it owns a small TextEncoder of its own, trained
on real pairs through the matching and contrastive heads (like CLIP). Reading
the generator's text features under ``stop_gradient`` instead
(``text_source="generator"``) ties what D matches against to a moving target
that G itself shapes. The saving would be small: D's own encoder (width 32,
depth 1) costs 8 ms of a 0.8 s shapes32 step at batch 32 on 2 CPU cores
(measured with jitted forward passes). So the default is the independent
encoder; both are a config switch (``model.discriminator.text_source``), and
their effect on caption alignment belongs to the quality benchmark.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dallex.losses import l2_normalize
from dallex.models.generator import num_doublings
from dallex.models.layers import Dtype
from dallex.models.text_encoder import TextEncoder

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
    conv = functools.partial(nn.Conv, self.channels, kernel_init=_HE, dtype=self.dtype)
    skip = nn.avg_pool(conv((1, 1), name="skip")(x), (2, 2), (2, 2))
    for i in range(2):
      x = nn.leaky_relu(conv((3, 3), name=f"conv_{i}")(x), 0.2)
    return (nn.avg_pool(x, (2, 2), (2, 2)) + skip) / jnp.sqrt(2.0).astype(self.dtype)


class _Trunk(nn.Module):
  """images [B, R, R, 3] -> (h [B, Dh], [feature map of each down block])."""
  stage_channels: tuple[int, ...]
  base_channels: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), kernel_init=_HE, dtype=self.dtype)
    x = nn.leaky_relu(conv(self.base_channels, name="stem")(images.astype(self.dtype)), 0.2)
    feats = []
    for i, channels in enumerate(self.stage_channels):
      x = DownBlock(channels, self.dtype, name=f"down_{i}")(x)
      feats.append(x)
    x = nn.leaky_relu(conv(x.shape[-1], name="final_conv")(x), 0.2)
    h = nn.leaky_relu(nn.Dense(self.hidden, kernel_init=_HE, dtype=jnp.float32, name="to_hidden")(
        x.reshape(x.shape[0], -1).astype(jnp.float32)), 0.2)
    return h, feats


class _Heads(nn.Module):
  """h [B, Dh], sentence [B, Dt] -> Judgement."""
  hidden: int
  embed_dim: int
  init_logit_scale: float

  @nn.compact
  def __call__(self, h: jax.Array, sentence: jax.Array) -> Judgement:
    logit_uncond = nn.Dense(1, name="uncond")(h)[:, 0]
    projection = nn.Dense(self.hidden, name="text_projection")(sentence)
    logit = logit_uncond + jnp.sum(h * projection, axis=-1) / jnp.sqrt(float(self.hidden))
    img_emb = l2_normalize(nn.Dense(self.embed_dim, name="image_embed")(h))
    txt_emb = l2_normalize(nn.Dense(self.embed_dim, name="text_embed")(sentence))
    log_scale = self.param("log_logit_scale", nn.initializers.constant(
        jnp.log(self.init_logit_scale)), ())
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
    text_encoder: D's own text encoder, or None when it is given the
      generator's sentence vectors.
    init_logit_scale: initial contrastive inverse temperature (CLIP: 1/0.07).
  """
  resolution: int
  base_channels: int = 32
  max_channels: int = 256
  hidden: int = 256
  embed_dim: int = 128
  text_encoder: TextEncoder | None = None
  init_logit_scale: float = 1.0 / 0.07
  dtype: Dtype = jnp.float32

  def setup(self):
    n = num_doublings(self.resolution, FINAL_SIDE)
    stages = tuple(min(self.max_channels, self.base_channels * 2**i) for i in range(n))
    self.trunk = _Trunk(stages, self.base_channels, self.hidden, self.dtype)
    self.head = _Heads(self.hidden, self.embed_dim, self.init_logit_scale)

  def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids, mask [B, L] -> sentence [B, Dt] from D's own text encoder."""
    if self.text_encoder is None:
      raise ValueError("this discriminator reads the generator's text features "
                       "(text_source='generator'); it has no encoder of its own")
    return self.text_encoder(ids, mask).sentence

  def features(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images [B, R, R, 3] -> (h [B, Dh], [feature maps of each down block])."""
    if images.shape[1:] != (self.resolution, self.resolution, 3):
      raise ValueError(f"images must be [B, {self.resolution}, {self.resolution}, 3], "
                       f"got {images.shape}")
    return self.trunk(images)

  def heads(self, h: jax.Array, sentence: jax.Array) -> Judgement:
    """h [B, Dh], sentence [B, Dt] -> Judgement."""
    return self.head(h, sentence)

  def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array,
               sentence: jax.Array | None = None) -> tuple[Judgement, list[jax.Array]]:
    """Judges image-text pairs. ``sentence`` replaces D's own text encoding when given."""
    if sentence is None:
      sentence = self.encode_text(ids, mask)
    h, feats = self.features(images)
    return self.heads(h, sentence), feats
