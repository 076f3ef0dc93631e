"""Model zoo: ``build_models(model_config, resolution) -> (generator, discriminator)``.

Both architectures share one calling convention, so the train step and the
sampler never ask which one they hold:

    generator(ids, mask, z, ca_eps) -> GeneratorOutput(images, text, cond)
    discriminator.encode_text(ids, mask) -> TextFeatures(tokens, mask, sentence)
    discriminator.features(images) -> (ImageFeatures(pooled, regions), [feature maps])
    discriminator.heads(image_features, text_features)
        -> Judgement(logit, logit_uncond, img_emb, txt_emb, logit_scale)

``model.arch`` is ``"dallex"`` (Transformer text encoder + CA + Transformer/CNN
generator + projection discriminator) or ``"seed"`` (the article's GRU/MLP design).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dallex.models.discriminator import Discriminator, ImageFeatures, Judgement
from dallex.models.generator import Generator, GeneratorOutput
from dallex.models.seed import SeedDiscriminator, SeedGenerator, SeedTextEncoder
from dallex.models.text_encoder import TextEncoder, TextFeatures
from dallex.text import VOCAB_SIZE

__all__ = ["build_models", "build_text_encoder", "compute_dtype", "Generator", "Discriminator",
           "GeneratorOutput", "ImageFeatures", "Judgement", "TextEncoder", "TextFeatures"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype for a config's ``model.dtype`` string."""
  if name not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


def build_text_encoder(cfg, dtype=jnp.float32, scan: bool = True,
                       remat: bool = False) -> TextEncoder:
  """The TextEncoder a text config describes (``config.model.text`` or
  ``config.model.discriminator.text``); older configs without the convolution
  keys get none."""
  return TextEncoder(vocab_size=VOCAB_SIZE, max_length=cfg.max_length, width=cfg.width,
                     depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                     conv_kernel=cfg.get("conv_kernel", 0), conv_layers=cfg.get("conv_layers", 2),
                     scan=scan, remat=remat, dtype=dtype)


def build_models(model, resolution: int) -> tuple[nn.Module, nn.Module]:
  """The generator and discriminator modules a model config describes.

  Args:
    model: the ``config.model`` ConfigDict (see experiments/configs).
    resolution: image side R (``config.data.resolution``).
  """
  if model.arch == "seed":
    s = model.seed
    encoder = SeedTextEncoder(VOCAB_SIZE, s.emb_dim, s.hidden_dim)
    return (SeedGenerator(encoder, resolution, model.z_dim, s.hidden_dim),
            SeedDiscriminator(resolution))
  if model.arch != "dallex":
    raise ValueError(f"model.arch must be 'dallex' or 'seed', got {model.arch!r}")
  dtype = compute_dtype(model.dtype)
  g, d = model.generator, model.discriminator
  generator = Generator(
      text_encoder=build_text_encoder(model.text, dtype, model.scan, model.remat),
      resolution=resolution, z_dim=model.z_dim, ca_dim=model.ca_dim, style_dim=g.style_dim,
      mapping_depth=g.mapping_depth, grid=g.grid, width=g.width, depth=g.depth,
      num_heads=g.heads, mlp_ratio=g.mlp_ratio, base_channels=g.base_channels,
      min_channels=g.min_channels,
      conditioning_augmentation=g.get("conditioning_augmentation", True),
      local_style=g.get("local_style", 0), layout_head=g.get("layout_head", False),
      grid_style=g.get("grid_style", True),
      scan=model.scan, remat=model.remat, dtype=dtype)
  if d.text_source not in ("own", "generator"):
    raise ValueError(f"model.discriminator.text_source must be 'own' or 'generator', "
                     f"got {d.text_source!r}")
  d_text = (build_text_encoder(d.text, dtype, model.scan, model.remat)
            if d.text_source == "own" else None)
  discriminator = Discriminator(
      resolution=resolution, base_channels=d.base_channels, max_channels=d.max_channels,
      hidden=d.hidden, embed_dim=d.embed_dim, text_encoder=d_text,
      word_region=d.get("word_region", False), dtype=dtype)
  return generator, discriminator
