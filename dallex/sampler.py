"""Load a trained run and draw images: ``load(workdir).generate(prompts)``.

Needs only the workdir (its config.json and checkpoints): no dataset and no
training code path. Uses the EMA generator; ``with_discriminator=True`` also
restores the discriminator, whose contrastive heads ``embed`` images and
captions (for R-precision).

    sampler = dallex.load("runs/shapes32")
    images = sampler.generate(["a small red circle on the left"], seed=0, num_per_prompt=4)
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dallex import noise, visualize
from dallex.models import build_models
from dallex.sampling import pad_rows, sample
from dallex.text import ByteTokenizer


@functools.partial(jax.jit, static_argnames=("generator", "discriminator", "text_source",
                                             "z_dim", "ca_dim"))
def _embed(generator, discriminator, g_params, d_params, images, ids, mask, *, text_source,
           z_dim, ca_dim):
  """Unit-norm image and text embeddings [B, E] from D's contrastive heads."""
  if text_source == "generator":
    b = ids.shape[0]
    out = generator.apply(g_params, ids, mask, jnp.zeros((b, z_dim)), jnp.zeros((b, ca_dim)))
    text = out.text
  else:
    text = discriminator.apply(d_params, ids, mask, method="encode_text")
  image, _ = discriminator.apply(d_params, images, method="features")
  judgement = discriminator.apply(d_params, image, text, method="heads")
  return judgement.img_emb, judgement.txt_emb


class Sampler:
  """A generator with its EMA parameters and tokenizer (and optionally the
  discriminator, for ``embed``)."""

  def __init__(self, config: ml_collections.ConfigDict, generator, params, step: int,
               discriminator=None, d_params=None):
    self.config = config
    self.generator = generator
    self.params = params
    self.step = step
    self.discriminator = discriminator
    self.d_params = d_params
    self.tokenizer = ByteTokenizer(config.model.text.max_length)

  def generate(self, prompts: list[str], seed: int = 0, num_per_prompt: int = 1,
               truncation: float = 1.0, batch_size: int = 64) -> np.ndarray:
    """uint8 [len(prompts) * num_per_prompt, R, R, 3], prompt-major.

    Image i of the output uses noise index i under ``seed``, so it does not
    depend on ``batch_size``. Batches are padded to ``batch_size`` so the
    function compiles once.
    """
    texts = [p for p in prompts for _ in range(num_per_prompt)]
    if not texts:
      return np.zeros((0, self.config.data.resolution, self.config.data.resolution, 3), np.uint8)
    ids, mask = self.tokenizer.encode(texts)
    key = jax.random.key(seed)
    out = []
    for start in range(0, len(texts), batch_size):
      n = min(batch_size, len(texts) - start)
      rows = slice(start, start + n)
      images = sample(self.generator, self.params, pad_rows(ids[rows], batch_size),
                      pad_rows(mask[rows], batch_size), key,
                      z_dim=self.config.model.z_dim, ca_dim=self.config.model.ca_dim,
                      truncation=truncation, start_index=start)
      out.append(visualize.to_uint8(np.asarray(images)[:n]))
    return np.concatenate(out)

  def embed(self, images: np.ndarray, prompts: list[str],
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm contrastive embeddings of images (uint8 [N, R, R, 3]) and of
    prompts [M] from the discriminator's heads: ([N, E], [M, E])."""
    if self.d_params is None:
      raise ValueError("this sampler has no discriminator: load(workdir, with_discriminator=True)")
    source = _text_source(self.config)
    if source is None:
      raise ValueError(f"model.arch={self.config.model.arch!r} has no contrastive embedding heads")
    res = self.config.data.resolution
    blank = np.zeros((1, res, res, 3), np.uint8)
    ids, mask = self.tokenizer.encode(list(prompts) or [""])
    images = np.asarray(images)
    n, m = len(images), len(prompts)
    image_emb, text_emb = [], []
    for start in range(0, max(n, m), batch_size):
      # Images and captions are embedded independently, so either may run out first.
      rows = slice(start, start + batch_size)
      img, txt = _embed(self.generator, self.discriminator, self.params, self.d_params,
                        visualize.to_float(pad_rows(images[rows], batch_size, blank)),
                        pad_rows(ids[rows], batch_size, ids[:1]),
                        pad_rows(mask[rows], batch_size, mask[:1]), text_source=source,
                        z_dim=self.config.model.z_dim, ca_dim=self.config.model.ca_dim)
      image_emb.append(np.asarray(img))
      text_emb.append(np.asarray(txt))
    return np.concatenate(image_emb)[:n], np.concatenate(text_emb)[:m]


def _text_source(config: ml_collections.ConfigDict) -> str | None:
  """Where D reads captions from: 'own' or 'generator'; None when it has no embedding heads."""
  if config.model.arch == "seed":
    return None
  return config.model.discriminator.text_source


def _abstract_params(config: ml_collections.ConfigDict, generator, discriminator):
  """Shapes and dtypes of the generator's (and, if given, the discriminator's) parameters."""
  length, res = config.model.text.max_length, config.data.resolution
  ids, mask = np.zeros((1, length), np.int32), np.ones((1, length), bool)
  z, eps = noise.latents(jax.random.key(0), np.arange(1), config.model.z_dim, config.model.ca_dim)
  g_params = jax.eval_shape(generator.init, jax.random.key(0), ids, mask, z, eps)
  if discriminator is None:
    return g_params, None
  sentence = None
  if _text_source(config) == "generator":
    sentence = jax.eval_shape(
        lambda p: generator.apply(p, ids, mask, z, eps).text.sentence, g_params)
  images = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  return g_params, jax.eval_shape(discriminator.init, jax.random.key(0), images, ids, mask,
                                  sentence)


def load(workdir: str, with_discriminator: bool = False, step: int | None = None,
         ema: bool = True) -> Sampler:
  """The sampler of the newest readable checkpoint in ``workdir`` (or of ``step``).

  Args:
    workdir: a training workdir (config.json and checkpoints/).
    with_discriminator: also restore the discriminator (for ``Sampler.embed``).
    step: restore this checkpoint and no other.
    ema: the EMA generator (default) or, if False, the online one being trained.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in the workdir.
    ValueError: no checkpoint can be read or fits the config; names each one tried.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: not a dallex training workdir")
  try:
    with open(config_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{config_path} is not a readable config ({e})") from None
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if step is not None:
    if step not in steps:
      manager.close()
      raise FileNotFoundError(f"no checkpoint of step {step} in {directory} (it has {steps})")
    steps = [step]
  generator, discriminator = build_models(config.model, config.data.resolution)
  if not with_discriminator:
    discriminator = None
  g_shapes, d_shapes = _abstract_params(config, generator, discriminator)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  g_name = "ema_params" if ema else "g_params"
  target = {g_name: g_shapes}
  if discriminator is not None:
    target["d_params"] = d_shapes
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
  errors = []
  try:
    for candidate in steps:
      try:
        restored = manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target))))["state"]
        return Sampler(config, generator, restored[g_name], candidate, discriminator,
                       restored.get("d_params"))
      except Exception as e:  # Damaged or incompatible: try an older one, then report all.
        errors.append(f"{directory}/{candidate}: {type(e).__name__}: {str(e)[:300]}")
  finally:
    manager.close()
  raise ValueError("no checkpoint could be restored for this config:\n" + "\n".join(errors))
