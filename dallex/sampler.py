"""Load a trained run and draw images: ``load(workdir).generate(prompts)``.

Needs only the workdir (its config.json and checkpoints): no dataset and no
training code path. Uses the EMA generator.

    sampler = dallex.sampler.load("runs/shapes32")
    images = sampler.generate(["a small red circle on the left"], seed=0, num_per_prompt=4)
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dallex import noise, visualize
from dallex.models import build_models
from dallex.sampling import sample
from dallex.text import ByteTokenizer


class Sampler:
  """A generator with its EMA parameters and tokenizer."""

  def __init__(self, config: ml_collections.ConfigDict, generator, params, step: int):
    self.config = config
    self.generator = generator
    self.params = params
    self.step = step
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
      pad = batch_size - n
      b_ids = np.concatenate([ids[start:start + n], np.repeat(ids[start:start + 1], pad, 0)])
      b_mask = np.concatenate([mask[start:start + n], np.repeat(mask[start:start + 1], pad, 0)])
      images = sample(self.generator, self.params, b_ids, b_mask, key,
                      z_dim=self.config.model.z_dim, ca_dim=self.config.model.ca_dim,
                      truncation=truncation, start_index=start)
      out.append(visualize.to_uint8(np.asarray(images)[:n]))
    return np.concatenate(out)


def load(workdir: str) -> Sampler:
  """The sampler of the newest checkpoint in ``workdir``.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in the workdir.
    ValueError: the checkpoint cannot be read or does not fit the config.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: not a dallex training workdir")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  generator, _ = build_models(config.model, config.data.resolution)
  length = config.model.text.max_length
  ids, mask = np.zeros((1, length), np.int32), np.ones((1, length), bool)
  z, eps = noise.latents(jax.random.key(0), np.arange(1), config.model.z_dim, config.model.ca_dim)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        jax.eval_shape(generator.init, jax.random.key(0), ids, mask, z, eps))
  errors = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item={"ema_params": target}, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  {"ema_params": target}))))
      return Sampler(config, generator, restored["state"]["ema_params"], step)
    except Exception as e:  # Damaged or incompatible: try an older one, then report all.
      errors.append(f"{directory}/{step}: {type(e).__name__}: {str(e)[:300]}")
  raise ValueError("no checkpoint could be restored for this config:\n" + "\n".join(errors))
