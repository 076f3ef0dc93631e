"""Every experiment config loads, builds its models, and documents its command."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import pytest

from dallex import config as config_lib
from dallex.models import build_models
from dallex.objective import build_objective

CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments",
    "configs",
)
NAMES = sorted(
    f[:-3]
    for f in os.listdir(CONFIG_DIR)
    if f.endswith(".py") and f != "__init__.py"
)


def test_the_expected_configs_exist():
  assert {
      "shapes32",
      "shapes64",
      "seed_shapes32",
      "folder",
      "coco64",
      "coco256",
  } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_starts_with_its_command(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  body = module.__doc__.strip().split("\n\n")[1].strip()
  assert body.startswith(
      "python -m experiments.train --config " f"experiments/configs/{name}.py"
  ), body
  config = module.get_config()
  for key in (
      "seed",
      "train.steps",
      "train.batch_size",
      "train.checkpoint_every",
      "data.path",
      "data.resolution",
  ):
    section = config
    for part in key.split("."):
      section = section[part]
  objective = build_objective(config)
  res, length = config.data.resolution, config.model.text.max_length
  ids = jnp.zeros((2, length), jnp.int32)
  mask = jnp.ones((2, length), bool)
  z = jnp.zeros((2, config.model.z_dim))
  eps = jnp.zeros((2, config.model.ca_dim))
  out = jax.eval_shape(
      lambda: objective.generator.apply(
          objective.generator.init(jax.random.key(0), ids, mask, z, eps),
          ids,
          mask,
          z,
          eps,
      )
  )
  assert out.images.shape == (2, res, res, 3)


@pytest.mark.parametrize("name", NAMES)
def test_config_keeps_the_schema_and_its_models_take_every_field(name):
  """Experiment configs change values, never keys; every model field reaches a
  module (the modules' fields are the config sections' keys)."""
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  missing, unknown = config_lib._differences(
      config_lib.default_config(), config
  )
  assert (missing, unknown) == ([], [])


def test_modules_are_built_from_their_sections_as_they_stand():
  config = config_lib.default_config()
  generator, discriminator = build_models(config.model, config.data.resolution)
  for module, section in (
      (generator, config.model.generator),
      (generator.text_encoder, config.model.text),
      (discriminator.text_encoder, config.model.discriminator.text),
  ):
    assert {k: getattr(module, k) for k in section} == section.to_dict()
  d = config.model.discriminator
  assert {k: getattr(discriminator, k) for k in d if k != "text"} == {
      k: v for k, v in d.to_dict().items() if k != "text"
  }


def test_saved_configs_are_checked_against_the_schema(tmp_path):
  path = tmp_path / "config.json"
  config = json.loads(config_lib.default_config().to_json())
  path.write_text(json.dumps(config))
  assert config_lib.from_json(str(path)).to_dict() == config
  # A run saved before data.language existed reads as English, as it was.
  del config["data"]["language"]
  path.write_text(json.dumps(config))
  assert config_lib.from_json(str(path)).data.language == "en"
  del config["model"]["generator"]["local_style"]
  config["data"]["hard_negatives"] = False
  path.write_text(json.dumps(config))
  with pytest.raises(
      ValueError,
      match=r"missing model.generator.local_style; "
      r"unknown data.hard_negatives\. It was written by",
  ):
    config_lib.from_json(str(path))
  path.write_text("[1, 2]")
  with pytest.raises(
      ValueError, match="holds a JSON list, not a config object"
  ):
    config_lib.from_json(str(path))
