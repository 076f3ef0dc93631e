"""Model zoo: ``build_models(model_config, resolution) -> (generator, discriminator)``.

Both architectures share one calling convention, so the train step and the
sampler never ask which one they hold:

    generator(ids, mask, z, ca_eps) -> GeneratorOutput(images, text, cond, layout)
    discriminator.encode_text(ids, mask) -> TextFeatures(tokens, mask, sentence)
    discriminator.features(images) -> (h [B, Dh], [feature maps])
    discriminator.heads(h, text_features)
        -> Judgement(logit, logit_uncond, img_emb, txt_emb, logit_scale)

``model.arch`` is ``"dallex"`` (Transformer text encoder + CA + Transformer/CNN
generator + projection discriminator) or ``"seed"`` (the article's GRU/MLP design).
Each module is built from its config section as it stands: its fields are the
section's keys, and their defaults live in ``dallex.config`` alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dallex.models.discriminator import Discriminator, Judgement
from dallex.models.generator import Generator, GeneratorOutput
from dallex.models.seed import SeedDiscriminator, SeedGenerator, SeedTextEncoder
from dallex.models.text_encoder import TextEncoder, TextFeatures
from dallex.text import VOCAB_SIZE

__all__ = [
    "build_models",
    "compute_dtype",
    "Generator",
    "Discriminator",
    "GeneratorOutput",
    "Judgement",
    "TextEncoder",
    "TextFeatures",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype for a config's ``model.dtype`` string."""
  if name not in _DTYPES:
    raise ValueError(
        f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}"
    )
  return _DTYPES[name]


def build_models(model, resolution: int) -> tuple[nn.Module, nn.Module]:
  """The generator and discriminator modules a model config describes.

  Args:
    model: the ``config.model`` ConfigDict (``dallex.config``).
    resolution: image side R (``config.data.resolution``).
  """
  if model.arch == "seed":
    encoder = SeedTextEncoder(VOCAB_SIZE, **model.seed)
    return (
        SeedGenerator(encoder, resolution, model.z_dim, model.seed.hidden_dim),
        SeedDiscriminator(resolution),
    )
  if model.arch != "dallex":
    raise ValueError(
        f"model.arch must be 'dallex' or 'seed', got {model.arch!r}"
    )
  dtype = compute_dtype(model.dtype)
  stacks = dict(scan=model.scan, remat=model.remat, dtype=dtype)
  generator = Generator(
      **model.generator,
      text_encoder=TextEncoder(**model.text, **stacks),
      resolution=resolution,
      z_dim=model.z_dim,
      ca_dim=model.ca_dim,
      **stacks,
  )
  d = dict(model.discriminator)
  d_text = TextEncoder(**d.pop("text"), **stacks)
  discriminator = Discriminator(
      **d, text_encoder=d_text, resolution=resolution, dtype=dtype
  )
  return generator, discriminator
