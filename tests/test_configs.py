"""Every experiment config loads, builds its models, and documents its command."""

import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from dallex.objective import build_objective

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "configs")
NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py")


def test_the_expected_configs_exist():
  assert {"shapes32", "shapes64", "seed_shapes32", "folder", "coco64", "coco256"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_starts_with_its_command(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  body = module.__doc__.strip().split("\n\n")[1].strip()
  assert body.startswith("python -m experiments.train --config "
                         f"experiments/configs/{name}.py"), body
  config = module.get_config()
  for key in ("seed", "train.steps", "train.batch_size", "train.checkpoint_every",
              "data.path", "data.resolution"):
    section = config
    for part in key.split("."):
      section = section[part]
  objective = build_objective(config)
  res, length = config.data.resolution, config.model.text.max_length
  ids = jnp.zeros((2, length), jnp.int32)
  mask = jnp.ones((2, length), bool)
  z = jnp.zeros((2, config.model.z_dim))
  eps = jnp.zeros((2, config.model.ca_dim))
  out = jax.eval_shape(lambda: objective.generator.apply(
      objective.generator.init(jax.random.key(0), ids, mask, z, eps), ids, mask, z, eps))
  assert out.images.shape == (2, res, res, 3)
