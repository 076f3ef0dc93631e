"""Every loss the seed article names, as small pure functions.

Logits are raw discriminator outputs (no sigmoid); batch reductions are means.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def l2_normalize(v: jax.Array, eps: float = 1e-6) -> jax.Array:
  """v / (||v|| + eps) along the last axis."""
  return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)


def d_nonsaturating(
    real_logits: jax.Array, fake_logits: jax.Array
) -> jax.Array:
  """The article's BCE for D: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))),
  i.e. mean softplus(-real) + mean softplus(fake)."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(
      jax.nn.softplus(fake_logits)
  )


def g_nonsaturating(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating G loss (BCE against "real"): mean -log sigmoid(D(G(z)))
  = mean softplus(-fake)."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def d_hinge(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge D loss: mean max(0, 1 - real) + mean max(0, 1 + fake)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(
      jax.nn.relu(1.0 + fake_logits)
  )


def g_hinge(fake_logits: jax.Array) -> jax.Array:
  """Hinge G loss: -mean D(G(z))."""
  return -jnp.mean(fake_logits)


ADVERSARIAL: dict[str, tuple[Callable, Callable]] = {
    "nonsaturating": (d_nonsaturating, g_nonsaturating),
    "hinge": (d_hinge, g_hinge),
}


def r1_penalty(
    logit_fn: Callable[[jax.Array], jax.Array], images: jax.Array
) -> jax.Array:
  """R1 (Mescheder et al. 2018): mean over the batch of ||d D(x) / d x||^2 on real x.

  Args:
    logit_fn: images [B, ...] -> logits [B]; each logit depends on its own image only.
    images: [B, ...] real images.

  Returns:
    Scalar. The usual loss term is (gamma / 2) * r1_penalty.
  """
  grads = jax.grad(lambda x: jnp.sum(logit_fn(x)))(images)
  return jnp.mean(
      jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1)
  )


def matching_aware_gp(
    logit_fn: Callable[[jax.Array, Any], jax.Array],
    images: jax.Array,
    text: Any,
    power: float = 6.0,
) -> jax.Array:
  """MA-GP (DF-GAN, Tao et al. 2022): mean over real matching pairs of
  ||(d D(x, e) / d x, d D(x, e) / d e)||_2 ^ p, with p = 6 in the paper.

  The gradient is taken with respect to both the image and the text
  embedding, which smooths D around the real, matching data points.

  Args:
    logit_fn: (images [B, ...], text) -> logits [B].
    images: real images; text: their captions' embedding, an array [B, Dt]
      or a pytree of float arrays [B, ...] (e.g. token and sentence features).
    power: p.

  Returns:
    Scalar. The usual loss term is k * matching_aware_gp (k = 2 in DF-GAN).
  """
  gx, ge = jax.grad(lambda x, e: jnp.sum(logit_fn(x, e)), argnums=(0, 1))(
      images, text
  )
  squared = sum(
      jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=-1)
      for g in [gx, *jax.tree.leaves(ge)]
  )
  # Square root with a floor so the gradient of the penalty is finite at 0.
  return jnp.mean(jnp.power(squared + 1e-12, power / 2.0))


def feature_matching(
    real_features: Sequence[jax.Array], fake_features: Sequence[jax.Array]
) -> jax.Array:
  """Perceptual loss in the discriminator's feature space, summed over layers:
  sum_l mean_c |E_batch f_l(real) - E_batch f_l(fake)| (Salimans et al. 2016),
  matching feature statistics, not images one by one. Real features are
  constants (stop_gradient): this loss trains G only.

  Args:
    real_features, fake_features: one [B, ...] map per layer (the batch sizes
      of the two may differ).
  """
  if len(real_features) != len(fake_features):
    raise ValueError(
        f"{len(real_features)} real vs {len(fake_features)} fake feature maps"
    )
  total = jnp.float32(0.0)
  for real, fake in zip(real_features, fake_features):
    real = jax.lax.stop_gradient(real).astype(jnp.float32)
    fake = fake.astype(jnp.float32)
    total += jnp.mean(jnp.abs(real.mean(axis=0) - fake.mean(axis=0)))
  return total


def block_mean(images: jax.Array, side: int) -> jax.Array:
  """[B, R, R, C] averaged in (R/side)^2 blocks -> [B, side, side, C] (float32)."""
  return _blocks(images, side).mean((2, 4))


def block_max(images: jax.Array, side: int) -> jax.Array:
  """[B, R, R, C], each channel's maximum in (R/side)^2 blocks -> [B, side, side, C]."""
  return _blocks(images, side).max((2, 4))


def _blocks(images: jax.Array, side: int) -> jax.Array:
  """[B, R, R, C] -> [B, side, k, side, k, C] float32, k = R / side."""
  b, r, _, c = images.shape
  if side < 1 or r % side:
    raise ValueError(f"block side {side} must divide the resolution {r}")
  k = r // side
  return images.astype(jnp.float32).reshape(b, side, k, side, k, c)


LAYOUT_POOLS = {"mean": block_mean, "max": block_max}
LAYOUT_DISTANCES = {"l1": jnp.abs, "l2": jnp.square}


def layout_loss(
    layout: jax.Array, real: jax.Array, pool: str = "mean", distance: str = "l1"
) -> jax.Array:
  """mean d(layout_i - pool(real_i, G)): G's grid guess [B, G, G, C] against the
  real image [B, R, R, C] of the same caption, pooled to G x G blocks, with
  d = |.| ("l1") or (.)^2 ("l2"); trains G only.

  ``pool="max"`` takes each block's brightest value per channel: on a dark
  background that is the colour of the object reaching into the block, at full
  strength, where the mean dilutes it by how much of the block the object
  covers, a fraction that position jitter makes unpredictable. L1 is minimised
  by the median, which stays at the background while an object's presence in
  a block is less likely than not; L2's gradient grows with the error, so the
  object blocks lead (RESULTS.md section 16).
  """
  if pool not in LAYOUT_POOLS:
    raise ValueError(
        f"layout pool must be one of {sorted(LAYOUT_POOLS)}, got {pool!r}"
    )
  if distance not in LAYOUT_DISTANCES:
    raise ValueError(
        f"layout distance must be one of {sorted(LAYOUT_DISTANCES)}, "
        f"got {distance!r}"
    )
  target = jax.lax.stop_gradient(LAYOUT_POOLS[pool](real, layout.shape[1]))
  return jnp.mean(
      LAYOUT_DISTANCES[distance](layout.astype(jnp.float32) - target)
  )


def diversity_shortfall(
    images: jax.Array, partners: jax.Array, target: float
) -> jax.Array:
  """max(0, target - mean |images - partners|): how far two images of the same
  captions under different noise ([K, R, R, 3] each, row k with row k) fall
  short of differing by ``target`` on average; trains G only through its
  gradient, which pushes the pairs apart until they differ by ``target``.

  A conditional generator can ignore its noise and still fool D: D judges
  each image on its own, and the mean image of a caption is a plausible one
  (DSGAN, Yang et al. 2019; MSGAN, Mao et al. 2019). Measured over the whole
  batch of pairs, not per pair, so captions whose scenes vary more (larger
  objects) can carry more of the distance; capped at ``target``, so the term
  asks for the data's variation and no more.
  """
  return jax.nn.relu(target - mean_abs_difference(images, partners))


def mean_abs_difference(a: jax.Array, b: jax.Array) -> jax.Array:
  """mean |a - b| in float32 over images [K, R, R, 3]."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def reconstruction(generated: jax.Array, real: jax.Array) -> jax.Array:
  """mean |generated - real| over images [K, R, R, 3] of the same captions:
  a direct, paired signal of what each caption's picture holds, where D's
  judgement reaches G only through D's own learning. L1, whose minimiser
  is the median: sharper than L2's mean where the scenes vary."""
  return mean_abs_difference(generated, real)


def info_nce(
    img_emb: jax.Array, txt_emb: jax.Array, logit_scale: jax.Array | float
) -> jax.Array:
  """Symmetric InfoNCE (CLIP), the article's "encoder loss": image i must pick
  caption i among the batch's captions and vice versa.

  loss = (CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2 with I, T the
  L2-normalised embeddings [B, E] and s the inverse temperature.
  """
  img, txt = l2_normalize(img_emb.astype(jnp.float32)), l2_normalize(
      txt_emb.astype(jnp.float32)
  )
  logits = logit_scale * img @ txt.T
  labels = jnp.arange(logits.shape[0])
  image_to_text = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
  text_to_image = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[labels, labels])
  return 0.5 * (image_to_text + text_to_image)


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) per sample, averaged over the batch:
  mean_b 0.5 * sum_c (mu^2 + exp(logvar) - 1 - logvar)."""
  return jnp.mean(
      0.5 * jnp.sum(jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
  )
