"""The two players' objectives, each a pure function of its own parameter tree.

    discriminator_loss(d_params, g_params, batch, key)
      = adversarial(real, [generated, mismatched])                real pairs vs fakes
        + gradient penalty (R1 or MA-GP) on real pairs
        + contrastive_d * InfoNCE(real images, their captions)
    generator_loss(g_params, d_params, batch, key)
      = adversarial(generated)
        + feature_matching * FM(D features of real, generated)    "perceptual loss"
        + feature_net_weight * frozen-network distance (optional)
        + layout * L1/L2(G's grid guess of the layout, real pooled to G^2 blocks)
        + contrastive_g * InfoNCE(generated images, their captions)  "encoder loss"
        + kl * KL(conditioning augmentation || N(0, I))
        + reconstruction * mean |G(c, z) - x|  on the first rows (x: c's real image)
        + diversity * max(0, target - mean |G(c, z) - G(c, z')|)  on K captions

Each loss stops gradients into the other player's tree, so the gradient of
the generator loss with respect to the discriminator parameters is exactly
zero and vice versa: one tree's update can never move the other.

A batch is a dict with ``image`` float [B, R, R, 3] in [-1, 1], ``ids`` int32
[B, L], ``mask`` bool [B, L]; ``index`` int [B] (optional, default arange)
holds the examples' global positions, which pick each example's noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dallex import losses, noise
from dallex.models import build_models
from dallex.perceptual import FeatureNet, load_feature_net, perceptual_distance

Metrics = dict[str, jax.Array]

# fold_in(key, _PARTNER_STREAM): the diversity term's second noise, a stream
# no sample index reaches (indices are below 2^31).
_PARTNER_STREAM = 2**31 + 1


@dataclasses.dataclass(frozen=True)
class GanObjective:
  """Static description of the game: the two modules and the loss config."""

  generator: nn.Module
  discriminator: nn.Module
  loss: Any  # the config's `loss` ConfigDict
  z_dim: int
  ca_dim: int
  feature_net: FeatureNet | None = None

  def __post_init__(self):
    if self.loss.adversarial not in losses.ADVERSARIAL:
      raise ValueError(
          f"loss.adversarial must be one of {sorted(losses.ADVERSARIAL)}, "
          f"got {self.loss.adversarial!r}"
      )
    if self.loss.gradient_penalty not in ("r1", "magp", "none"):
      raise ValueError(
          "loss.gradient_penalty must be 'r1', 'magp' or 'none', got "
          f"{self.loss.gradient_penalty!r}"
      )
    if self.loss.feature_net_weight and self.feature_net is None:
      raise ValueError(
          "loss.feature_net_weight > 0 needs loss.feature_net_path"
      )
    if self.loss.layout and not getattr(self.generator, "layout_head", False):
      raise ValueError(
          "loss.layout > 0 needs a generator with a layout head: set "
          "model.generator.layout_head=True (dallex architecture)"
      )
    if self.loss.layout_pool not in losses.LAYOUT_POOLS:
      raise ValueError(
          f"loss.layout_pool must be one of {sorted(losses.LAYOUT_POOLS)}, "
          f"got {self.loss.layout_pool!r}"
      )
    if self.loss.layout_distance not in losses.LAYOUT_DISTANCES:
      raise ValueError(
          "loss.layout_distance must be one of "
          f"{sorted(losses.LAYOUT_DISTANCES)}, got {self.loss.layout_distance!r}"
      )
    if self.loss.diversity and not (
        self.loss.diversity_target > 0 and self.loss.diversity_pairs >= 1
    ):
      raise ValueError(
          "loss.diversity > 0 needs loss.diversity_target > 0 (the mean "
          "|difference| asked of two images of one caption) and "
          f"loss.diversity_pairs >= 1, got {self.loss.diversity_target} and "
          f"{self.loss.diversity_pairs}"
      )
    if not 0.0 < self.loss.reconstruction_rows <= 1.0:
      raise ValueError(
          "loss.reconstruction_rows is the fraction of each batch pulled "
          f"toward its real images, in (0, 1]; got "
          f"{self.loss.reconstruction_rows}"
      )
    if self.loss.layout:
      g, p = self.generator.grid, self.generator.layout_patch
      if p < 1 or self.generator.resolution % (g * p):
        raise ValueError(
            f"model.generator.layout_patch={p}: the layout ({g} grid tokens "
            f"x {p} = {g * p} px a side) must divide data.resolution="
            f"{self.generator.resolution} (and layout_patch be >= 1)"
        )

  # -- shared pieces -------------------------------------------------------

  @staticmethod
  def _gather(x, axis_name):
    """The global batch of ``x`` [b, ...] under pmap (every device's rows, in
    device order); ``x`` itself otherwise. Gradients flow back to each owner."""
    return (
        x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)
    )

  def _mismatched(self, text, axis_name):
    """Each example's caption (a pytree of [b, ...] arrays) swapped for the next
    example's in the global batch."""

    def roll(x):
      rolled = jnp.roll(self._gather(x, axis_name), 1, axis=0)
      if axis_name is None:
        return rolled
      b = x.shape[0]
      return jax.lax.dynamic_slice_in_dim(
          rolled, jax.lax.axis_index(axis_name) * b, b
      )

    return jax.tree.map(roll, text)

  def generate(self, g_params, batch, key):
    """G's output for the batch's captions, each example's noise drawn from
    ``key`` and its index (``batch["index"]``, default its row); with the
    generator's jitter, its images as drawn (see ``_as_drawn``)."""
    _, z, eps = self._latents(batch, key)
    return _as_drawn(
        self.generator.apply(g_params, batch["ids"], batch["mask"], z, eps)
    )

  def _latents(self, batch, key):
    """Each example's index and its noise (z [B, Z], eps [B, C]) under ``key``."""
    b = batch["ids"].shape[0]
    index = batch.get("index", jnp.arange(b))
    return (index, *noise.latents(key, index, self.z_dim, self.ca_dim))

  def generate_pass(self, g_params, batch, key):
    """``generate``'s output for the batch and, with ``loss.diversity``, the
    partners: [K, R, R, 3] images of the batch's first K captions
    (``loss.diversity_pairs``; under pmap, of each device's rows) under
    other noise z (the same conditioning noise), drawn in the same pass;
    else None."""
    if not self.loss.diversity:
      return self.generate(g_params, batch, key), None
    b = batch["ids"].shape[0]
    k = min(self.loss.diversity_pairs, b)
    index, z, eps = self._latents(batch, key)
    z_partner, _ = noise.latents(
        jax.random.fold_in(key, _PARTNER_STREAM), index[:k], self.z_dim, 1
    )
    twice = lambda x, y: jnp.concatenate([x, y[:k]])
    out = self.generator.apply(
        g_params,
        twice(batch["ids"], batch["ids"]),
        twice(batch["mask"], batch["mask"]),
        twice(z, z_partner),
        twice(eps, eps),
    )
    out = _as_drawn(out)
    partners = out.images[b:]
    return jax.tree.map(lambda x: x[:b], out), partners

  def _d(self, d_params, method, *args):
    return self.discriminator.apply(d_params, *args, method=method)

  def _text(self, d_params, batch):
    """D's view of the captions: TextFeatures from its own text encoder."""
    return self._d(d_params, "encode_text", batch["ids"], batch["mask"])

  def _info_nce(self, judgement, logit_scale, axis_name):
    """InfoNCE of the judged images' and captions' embeddings, over the global batch."""
    return losses.info_nce(
        self._gather(judgement.img_emb, axis_name),
        self._gather(judgement.txt_emb, axis_name),
        logit_scale,
    )

  def _logit_scale(self, judgement):
    if self.loss.learn_temperature:
      return judgement.logit_scale
    return jax.lax.stop_gradient(judgement.logit_scale)

  # -- the discriminator ---------------------------------------------------

  def discriminator_loss(
      self,
      d_params,
      g_params,
      batch,
      key,
      axis_name: str | None = None,
      fake: jax.Array | None = None,
  ) -> tuple[jax.Array, Metrics]:
    """Scalar loss for the discriminator tree, and metrics.

    Under pmap pass ``axis_name``: the terms that couple examples (mismatched
    captions, InfoNCE) then see the global batch, so the pmean of the
    gradients equals the single-device gradient on the same global batch.
    ``fake``: the generated images [B, R, R, 3] to judge, when the caller
    already has them (the train step); by default G draws them with ``key``.
    """
    if fake is None:
      fake = self.generate(jax.lax.stop_gradient(g_params), batch, key).images
    fake = jax.lax.stop_gradient(fake)
    real = batch["image"]
    text = self._text(d_params, batch)
    b = real.shape[0]
    # One pass over real and generated images together.
    h, _ = self._d(
        d_params,
        "features",
        jnp.concatenate([real, fake.astype(real.dtype)]),
    )
    h_real, h_fake = h[:b], h[b:]
    j_real = self._d(d_params, "heads", h_real, text)
    j_fake = self._d(d_params, "heads", h_fake, text)
    fake_logits = j_fake.logit
    if self.loss.mismatch:
      # Real image, wrong caption (the next one in the batch): must score as fake.
      j_mis = self._d(
          d_params, "heads", h_real, self._mismatched(text, axis_name)
      )
      fake_logits = jnp.concatenate([fake_logits, j_mis.logit])
    d_fn, _ = losses.ADVERSARIAL[self.loss.adversarial]
    adversarial = d_fn(j_real.logit, fake_logits)
    total = adversarial
    metrics = {
        "d_adversarial": adversarial,
        "d_real_logit": jnp.mean(j_real.logit),
        "d_fake_logit": jnp.mean(j_fake.logit),
    }

    def logit_fn(x, e):
      """Logits of images x with the captions' float features e = (tokens, sentence)."""
      pair_text = text._replace(tokens=e[0], sentence=e[1])
      return self._d(
          d_params, "heads", self._d(d_params, "features", x)[0], pair_text
      ).logit

    text_floats = (text.tokens, text.sentence)
    if self.loss.gradient_penalty == "r1":
      r1 = losses.r1_penalty(lambda x: logit_fn(x, text_floats), real)
      total += 0.5 * self.loss.r1_gamma * r1
      metrics["d_r1"] = r1
    elif self.loss.gradient_penalty == "magp":
      magp = losses.matching_aware_gp(
          logit_fn, real, text_floats, self.loss.magp_power
      )
      total += self.loss.magp_weight * magp
      metrics["d_magp"] = magp
    if self.loss.contrastive_d:
      nce = self._info_nce(j_real, self._logit_scale(j_real), axis_name)
      total += self.loss.contrastive_d * nce
      metrics["d_contrastive"] = nce
    metrics["d_loss"] = total
    return total, metrics

  # -- the generator -------------------------------------------------------

  def generator_loss(
      self, g_params, d_params, batch, key, axis_name: str | None = None
  ) -> tuple[jax.Array, Metrics]:
    """Scalar loss for the generator tree, and metrics (``axis_name``: as for D)."""
    g_out, partners = self.generate_pass(g_params, batch, key)
    return self.generator_output_loss(
        g_out, d_params, batch, axis_name, partners
    )

  def generator_output_loss(
      self,
      g_out,
      d_params,
      batch,
      axis_name: str | None = None,
      partners: jax.Array | None = None,
  ) -> tuple[jax.Array, Metrics]:
    """``generator_loss`` as a function of G's output ``g_out`` (and the
    diversity term's ``partners``, as ``generate_pass`` gives them): the train
    step differentiates it with respect to them and pulls that back through
    the one generator pass it shares with the discriminator update."""
    d_params = jax.lax.stop_gradient(d_params)
    fake = g_out.images
    text = self._text(d_params, batch)
    h_fake, f_fake = self._d(d_params, "features", fake)
    j_fake = self._d(d_params, "heads", h_fake, text)
    _, g_fn = losses.ADVERSARIAL[self.loss.adversarial]
    adversarial = g_fn(j_fake.logit)
    total = adversarial
    metrics = {"g_adversarial": adversarial}
    if self.loss.feature_matching:
      _, f_real = self._d(d_params, "features", batch["image"])
      if axis_name is not None:
        # Feature matching compares batch statistics: take them over the global batch.
        f_real = [
            self._gather(f.mean(0, keepdims=True), axis_name) for f in f_real
        ]
        f_fake = [
            self._gather(f.mean(0, keepdims=True), axis_name) for f in f_fake
        ]
      fm = losses.feature_matching(f_real, f_fake)
      total += self.loss.feature_matching * fm
      metrics["g_feature_matching"] = fm
    if self.loss.feature_net_weight:
      pd = perceptual_distance(self.feature_net, fake, batch["image"])
      total += self.loss.feature_net_weight * pd
      metrics["g_feature_net"] = pd
    if self.loss.layout:
      layout = losses.layout_loss(
          g_out.layout,
          batch["image"],
          self.loss.layout_pool,
          self.loss.layout_distance,
      )
      total += self.loss.layout * layout
      metrics["g_layout"] = layout
    if self.loss.contrastive_g:
      nce = self._info_nce(j_fake, j_fake.logit_scale, axis_name)
      total += self.loss.contrastive_g * nce
      metrics["g_contrastive"] = nce
    if self.loss.reconstruction:
      # Under pmap each device's first rows: the same fraction of the batch.
      rows = max(1, round(self.loss.reconstruction_rows * fake.shape[0]))
      rec = losses.reconstruction(fake[:rows], batch["image"][:rows])
      total += self.loss.reconstruction * rec
      metrics["g_reconstruction"] = rec
    if self.loss.kl:
      kl = losses.kl_divergence(g_out.cond.mu, g_out.cond.logvar)
      total += self.loss.kl * kl
      metrics["g_kl"] = kl
    if self.loss.diversity:
      shortfall = losses.diversity_shortfall(
          fake[: partners.shape[0]], partners, self.loss.diversity_target
      )
      total += self.loss.diversity * shortfall
      metrics["g_diversity_shortfall"] = shortfall
    metrics["g_loss"] = total
    return total, metrics


def _as_drawn(out):
  """G's output with its images as drawn, before the generator's colour
  jitter: the jitter is the sampler's, a fixed random layer that training
  never sees (RESULTS.md 61), and the train step is the same without it."""
  if out.drawn is None:
    return out
  return out._replace(images=out.drawn, drawn=None)


def build_objective(config) -> GanObjective:
  """The objective a full config describes (models from ``config.model``,
  losses from ``config.loss``)."""
  generator, discriminator = build_models(config.model, config.data.resolution)
  if config.model.arch == "seed" and (
      config.loss.contrastive_d or config.loss.contrastive_g
  ):
    raise ValueError(
        "the seed architecture's discriminator has no embedding heads: set "
        "loss.contrastive_d=0 and loss.contrastive_g=0"
    )
  path = config.loss.feature_net_path
  return GanObjective(
      generator,
      discriminator,
      config.loss,
      config.model.z_dim,
      config.model.ca_dim,
      load_feature_net(path) if path else None,
  )


def init_params(
    objective: GanObjective, key: jax.Array, batch: dict
) -> tuple[Any, Any]:
  """Fresh (generator, discriminator) parameter trees for batches shaped like ``batch``.

  Initialisation draws with the non-partitionable Threefry: the same quality of
  randomness, and XLA compiles the hundreds of initialiser draws 2-3x faster
  on CPU (13 s -> 5 s for the tiny test model). Parameters are replicated, so
  nothing is lost by not partitioning the draws.
  """
  with jax.threefry_partitionable(False):
    return _init_params(objective, key, batch)


def _init_params(
    objective: GanObjective, key: jax.Array, batch: dict
) -> tuple[Any, Any]:
  kg, kd, kn = jax.random.split(key, 3)
  b = batch["ids"].shape[0]
  z, eps = noise.latents(kn, jnp.arange(b), objective.z_dim, objective.ca_dim)
  g_params = objective.generator.init(kg, batch["ids"], batch["mask"], z, eps)
  images = jnp.zeros(batch["image"].shape, jnp.float32)
  d_params = objective.discriminator.init(
      kd, images, batch["ids"], batch["mask"]
  )
  return g_params, d_params
