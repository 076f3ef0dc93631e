"""Sampling: the pure, jitted ``sample`` function (and ``sample_rows``, a
seed per row), and ``load`` of a trained run.

    images = sample(generator, params, ids, mask, key, z_dim=64, ca_dim=64)
    sampler = dallex.load("runs/shapes32")          # the run's EMA generator
    images = sampler.generate(["a small red circle on the left"], seed=0, num_per_prompt=4)

Sample i's noise comes from fold_in(key, start_index + i), so an image depends
on its seed and global index only, not on the batch size or device count.
``load`` needs only the workdir (its config.json and checkpoints): no dataset
and no training code path. ``with_discriminator=True`` also restores the
discriminator, whose contrastive heads ``embed`` images and captions (for
R-precision).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dallex import config as config_lib
from dallex import noise, visualize
from dallex.checkpoint import Checkpointer
from dallex.models import build_models
from dallex.text import ByteTokenizer


@functools.partial(jax.jit, static_argnames=("generator", "z_dim", "ca_dim"))
def sample(
    generator: nn.Module,
    params,
    ids: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    z_dim: int,
    ca_dim: int,
    truncation: float | jax.Array = 1.0,
    start_index: int | jax.Array = 0,
) -> jax.Array:
  """Images [N, R, R, 3] in [-1, 1] for captions ids/mask [N, L].

  Args:
    generator: the generator module (static).
    params: its parameters (use the EMA ones).
    key: the seed's key.
    z_dim, ca_dim: noise sizes (static).
    truncation: scales the noise and the conditioning-augmentation sample.
    start_index: the global index of the first caption.
  """
  index = start_index + jnp.arange(ids.shape[0])
  z, eps = noise.latents(key, index, z_dim, ca_dim, truncation)
  return generator.apply(params, ids, mask, z, eps).images


@functools.partial(jax.jit, static_argnames=("generator", "z_dim", "ca_dim"))
def sample_rows(
    generator: nn.Module,
    params,
    ids: jax.Array,
    mask: jax.Array,
    seeds: jax.Array,
    indices: jax.Array,
    truncation: jax.Array,
    *,
    z_dim: int,
    ca_dim: int,
) -> jax.Array:
  """Images [N, R, R, 3] in [-1, 1], row n with its own seed, index and
  truncation (int32 seeds and indices [N], float32 truncation [N]): the image
  ``sample`` draws for that caption under that seed's key at that global
  index, whatever else shares the batch (requests of many users in one call).
  """

  def one(seed, index, t):
    z, eps = noise.latents(jax.random.key(seed), index[None], z_dim, ca_dim, t)
    return z[0], eps[0]

  z, eps = jax.vmap(one)(seeds, indices, truncation)
  return generator.apply(params, ids, mask, z, eps).images


def pad_rows(
    x: np.ndarray, size: int, fill: np.ndarray | None = None
) -> np.ndarray:
  """[n, ...] -> [size, ...] (n <= size), the new rows copies of ``fill`` [1, ...]
  (default: the first row). A jitted function then sees one batch shape and
  compiles once; the caller drops the padding from its output."""
  fill = x[:1] if fill is None else fill
  return np.concatenate([x, np.repeat(fill, size - len(x), 0)])


@functools.partial(jax.jit, static_argnames=("discriminator",))
def _embed(discriminator, d_params, images, ids, mask):
  """Unit-norm image and text embeddings [B, E] from D's contrastive heads."""
  text = discriminator.apply(d_params, ids, mask, method="encode_text")
  h, _ = discriminator.apply(d_params, images, method="features")
  judgement = discriminator.apply(d_params, h, text, method="heads")
  return judgement.img_emb, judgement.txt_emb


class Sampler:
  """A generator with its (EMA) parameters and tokenizer, and optionally the
  discriminator, for ``embed``."""

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      generator,
      params,
      step: int,
      discriminator=None,
      d_params=None,
  ):
    self.config = config
    self.generator = generator
    self.params = params
    self.step = step
    self.discriminator = discriminator
    self.d_params = d_params
    self.tokenizer = ByteTokenizer(config.model.text.max_length)

  def generate(
      self,
      prompts: list[str],
      seed: int = 0,
      num_per_prompt: int = 1,
      truncation: float = 1.0,
      batch_size: int = 64,
  ) -> np.ndarray:
    """uint8 [len(prompts) * num_per_prompt, R, R, 3], prompt-major.

    Image i of the output uses noise index i under ``seed``, so it does not
    depend on ``batch_size``. Batches are padded to ``batch_size`` so the
    function compiles once.

    Raises:
      ValueError: ``num_per_prompt`` or ``batch_size`` below 1, or
        ``truncation`` not above 0.
    """
    if num_per_prompt < 1 or batch_size < 1:
      raise ValueError(
          f"num_per_prompt ({num_per_prompt}) and batch_size ({batch_size}) "
          "must be >= 1"
      )
    if not truncation > 0:
      raise ValueError(
          f"truncation must be > 0 (1.0 for none), got {truncation}"
      )
    texts = [p for p in prompts for _ in range(num_per_prompt)]
    if not texts:
      return np.zeros(
          (0, self.config.data.resolution, self.config.data.resolution, 3),
          np.uint8,
      )
    ids, mask = self.tokenizer.encode(texts)
    key = jax.random.key(seed)
    out = []
    for start in range(0, len(texts), batch_size):
      n = min(batch_size, len(texts) - start)
      rows = slice(start, start + n)
      images = sample(
          self.generator,
          self.params,
          pad_rows(ids[rows], batch_size),
          pad_rows(mask[rows], batch_size),
          key,
          z_dim=self.config.model.z_dim,
          ca_dim=self.config.model.ca_dim,
          truncation=truncation,
          start_index=start,
      )
      out.append(visualize.to_uint8(np.asarray(images)[:n]))
    return np.concatenate(out)

  def embed(
      self, images: np.ndarray, prompts: list[str], batch_size: int = 64
  ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm contrastive embeddings of images (uint8 [N, R, R, 3]) and of
    prompts [M] from the discriminator's heads: ([N, E], [M, E])."""
    if self.d_params is None:
      raise ValueError(
          "this sampler has no discriminator: load(workdir, with_discriminator=True)"
      )
    if self.config.model.arch == "seed":
      raise ValueError("model.arch='seed' has no contrastive embedding heads")
    res = self.config.data.resolution
    blank = np.zeros((1, res, res, 3), np.uint8)
    ids, mask = self.tokenizer.encode(list(prompts) or [""])
    images = np.asarray(images)
    n, m = len(images), len(prompts)
    image_emb, text_emb = [], []
    for start in range(0, max(n, m), batch_size):
      # Images and captions are embedded independently, so either may run out first.
      rows = slice(start, start + batch_size)
      img, txt = _embed(
          self.discriminator,
          self.d_params,
          visualize.to_float(pad_rows(images[rows], batch_size, blank)),
          pad_rows(ids[rows], batch_size, ids[:1]),
          pad_rows(mask[rows], batch_size, mask[:1]),
      )
      image_emb.append(np.asarray(img))
      text_emb.append(np.asarray(txt))
    return np.concatenate(image_emb)[:n], np.concatenate(text_emb)[:m]


def _abstract_params(
    config: ml_collections.ConfigDict, generator, discriminator
):
  """Shapes and dtypes of the generator's (and, if given, the discriminator's) parameters."""
  length, res = config.model.text.max_length, config.data.resolution
  ids, mask = np.zeros((1, length), np.int32), np.ones((1, length), bool)
  z, eps = noise.latents(
      jax.random.key(0), np.arange(1), config.model.z_dim, config.model.ca_dim
  )
  g_params = jax.eval_shape(
      generator.init, jax.random.key(0), ids, mask, z, eps
  )
  if discriminator is None:
    return g_params, None
  images = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  return g_params, jax.eval_shape(
      discriminator.init, jax.random.key(0), images, ids, mask
  )


def load(
    workdir: str,
    with_discriminator: bool = False,
    step: int | None = None,
    ema: bool = True,
) -> Sampler:
  """The sampler of the newest readable checkpoint in ``workdir`` (or of ``step``).

  Args:
    workdir: a training workdir (config.json and checkpoints/).
    with_discriminator: also restore the discriminator (for ``Sampler.embed``).
    step: restore this checkpoint and no other.
    ema: the EMA generator (default) or, if False, the online one being trained.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in the workdir.
    ValueError: config.json is not this version's config, or no checkpoint can
      be read or fits the config (each one tried is named).
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(
        f"{workdir!r} has no config.json: not a dallex training workdir"
    )
  config = config_lib.from_json(config_path)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    if step is not None and step not in steps:
      raise FileNotFoundError(
          f"no checkpoint of step {step} in {ckpt.directory} "
          f"(it has {sorted(steps, reverse=True)})"
      )
    generator, discriminator = build_models(
        config.model, config.data.resolution
    )
    if not with_discriminator:
      discriminator = None
    g_shapes, d_shapes = _abstract_params(config, generator, discriminator)
    g_name = "ema_params" if ema else "g_params"
    target = {g_name: g_shapes}
    if discriminator is not None:
      target["d_params"] = d_shapes
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        target,
    )
    restored = ckpt.restore_latest(
        target, steps=None if step is None else [step], partial=True
    )
  finally:
    ckpt.close()
  return Sampler(
      config,
      generator,
      restored.state[g_name],
      restored.step,
      discriminator,
      restored.state.get("d_params"),
  )
