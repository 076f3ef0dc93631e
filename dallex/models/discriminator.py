"""The matching-aware discriminator: convolutional features, an unconditional
logit, a text projection term, optionally a word-region term, and an image
embedding for the contrastive loss.

    images [B,R,R,3] --stem + down blocks (features f1..fk, exposed for feature
    matching)--> regions r [B,N,C] (the final 4x4 map) --> h [B,Dh]
    logit = psi(h) + <P sentence, h>         (projection discriminator)
            + mean_n <C r_n, attend(Q (r_n + p_n) -> words)>   (word_region)
    img_emb = E_i h, txt_emb = E_t sentence  (contrastive "encoder loss")

The projection term compares the whole image with a pooled sentence, so it
cannot tell "a red circle on the left and a blue square on the right" from
the same caption with the colours swapped. The word-region term lets each
region of the final map (which knows its place through a learned position
embedding) attend to the caption's tokens and score what it finds there
against its own content: which object the caption puts in that place. On
``shapes32`` it has not yet made two-object captions come out right more
often (RESULTS.md, section 12), so it is off by default.

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
from dallex.models.layers import Conv, Dtype, PointwiseConv, dot_product_attention
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


class ImageFeatures(NamedTuple):
  """pooled: [B, Dh] the whole image; regions: [B, N, C] the final feature map's cells."""
  pooled: jax.Array
  regions: jax.Array


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
        nn.avg_pool(x, (2, 2), (2, 2)))
    for i in range(2):
      x = nn.leaky_relu(Conv(self.channels, kernel_init=_HE, dtype=self.dtype,
                             name=f"conv_{i}")(x), 0.2)
    return (nn.avg_pool(x, (2, 2), (2, 2)) + skip) / jnp.sqrt(2.0).astype(self.dtype)


class _Trunk(nn.Module):
  """images [B, R, R, 3] -> (ImageFeatures, [feature map of each down block])."""
  stage_channels: tuple[int, ...]
  base_channels: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[ImageFeatures, list[jax.Array]]:
    conv = functools.partial(Conv, kernel_init=_HE, dtype=self.dtype)
    x = nn.leaky_relu(conv(self.base_channels, name="stem")(images.astype(self.dtype)), 0.2)
    feats = []
    for i, channels in enumerate(self.stage_channels):
      x = DownBlock(channels, self.dtype, name=f"down_{i}")(x)
      feats.append(x)
    x = nn.leaky_relu(conv(x.shape[-1], name="final_conv")(x), 0.2)
    regions = x.reshape(x.shape[0], -1, x.shape[-1])
    h = nn.leaky_relu(nn.Dense(self.hidden, kernel_init=_HE, dtype=jnp.float32, name="to_hidden")(
        regions.reshape(x.shape[0], -1).astype(jnp.float32)), 0.2)
    return ImageFeatures(h, regions), feats


class WordRegion(nn.Module):
  """regions [B, N, C], text -> [B]: mean over regions of how well a region's
  content matches what the caption's tokens say about its place.

  Each region queries the tokens with its content plus a learned embedding
  p_n of its position; the attended words are compared with a projection of
  the content: mean_n <C r_n, softmax(q_n K^T / sqrt(E)) V> / sqrt(E), with
  q_n = Q (r_n + p_n) and K, V projections of the tokens (padding masked).
  """
  embed_dim: int

  @nn.compact
  def __call__(self, regions: jax.Array, text: TextFeatures) -> jax.Array:
    regions = regions.astype(jnp.float32)
    position = self.param("position_embed", nn.initializers.normal(0.02), regions.shape[1:])
    dense = lambda name: nn.Dense(self.embed_dim, name=name)
    tokens = text.tokens.astype(jnp.float32)
    query = dense("query")(regions + position)[:, :, None, :]
    words = dot_product_attention(query, dense("key")(tokens)[:, :, None, :],
                                  dense("value")(tokens)[:, :, None, :], text.mask)[:, :, 0, :]
    return jnp.mean(jnp.sum(dense("content")(regions) * words, axis=-1), axis=-1) / jnp.sqrt(
        float(self.embed_dim))


class _Heads(nn.Module):
  """ImageFeatures, TextFeatures -> Judgement."""
  hidden: int
  embed_dim: int
  init_logit_scale: float
  word_region: bool = False

  @nn.compact
  def __call__(self, image: ImageFeatures, text: TextFeatures) -> Judgement:
    h, sentence = image.pooled, text.sentence
    logit_uncond = nn.Dense(1, name="uncond")(h)[:, 0]
    projection = nn.Dense(self.hidden, name="text_projection")(sentence)
    logit = logit_uncond + jnp.sum(h * projection, axis=-1) / jnp.sqrt(float(self.hidden))
    if self.word_region:
      logit = logit + WordRegion(self.embed_dim, name="word_region")(image.regions, text)
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
      generator's text features.
    init_logit_scale: initial contrastive inverse temperature (CLIP: 1/0.07).
    word_region: add the word-region term to the matching logit.
  """
  resolution: int
  base_channels: int = 32
  max_channels: int = 256
  hidden: int = 256
  embed_dim: int = 128
  text_encoder: TextEncoder | None = None
  init_logit_scale: float = 1.0 / 0.07
  word_region: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    n = num_doublings(self.resolution, FINAL_SIDE)
    stages = tuple(min(self.max_channels, self.base_channels * 2**i) for i in range(n))
    self.trunk = _Trunk(stages, self.base_channels, self.hidden, self.dtype)
    self.head = _Heads(self.hidden, self.embed_dim, self.init_logit_scale, self.word_region)

  def encode_text(self, ids: jax.Array, mask: jax.Array) -> TextFeatures:
    """ids, mask [B, L] -> TextFeatures (tokens [B, L, Dt], sentence [B, Dt]) from
    D's own text encoder."""
    if self.text_encoder is None:
      raise ValueError("this discriminator reads the generator's text features "
                       "(text_source='generator'); it has no encoder of its own")
    return self.text_encoder(ids, mask)

  def features(self, images: jax.Array) -> tuple[ImageFeatures, list[jax.Array]]:
    """images [B, R, R, 3] -> (ImageFeatures, [feature maps of each down block])."""
    if images.shape[1:] != (self.resolution, self.resolution, 3):
      raise ValueError(f"images must be [B, {self.resolution}, {self.resolution}, 3], "
                       f"got {images.shape}")
    return self.trunk(images)

  def heads(self, image: ImageFeatures, text: TextFeatures) -> Judgement:
    """The judgement of each (image, caption) pair, row by row."""
    return self.head(image, text)

  def __call__(self, images: jax.Array, ids: jax.Array, mask: jax.Array,
               text: TextFeatures | None = None) -> tuple[Judgement, list[jax.Array]]:
    """Judges image-text pairs. ``text`` replaces D's own text encoding when given."""
    if text is None:
      text = self.encode_text(ids, mask)
    image, feats = self.features(images)
    return self.heads(image, text), feats
