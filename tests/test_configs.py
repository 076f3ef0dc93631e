"""Every experiment config loads, builds its models, documents its command, and
trains (at test sizes) and samples."""

import contextlib
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

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
  # A run saved before data.language, layout_patch and optim.flatten existed
  # reads as English with one colour per grid block and flattened optimiser
  # states, as it was (the default layout_patch is 4).
  del config["data"]["language"], config["model"]["generator"]["layout_patch"]
  del config["optim"]["flatten"]
  path.write_text(json.dumps(config))
  old = config_lib.from_json(str(path))
  assert old.data.language == "en" and old.model.generator.layout_patch == 1
  assert old.optim.flatten is True
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


def _tiny_sizes(config):
  """``config`` with every width and depth cut to test size; its structure
  (arch, grid, resolution, caption length, dtype, scan, remat, losses) kept."""
  m = config.model
  # 16: room for shapes32's colour jitter (12 channels of z).
  m.z_dim, m.ca_dim = 16, 8
  m.text.update(width=16, depth=1, heads=2)
  m.generator.update(style_dim=16, width=16, depth=1, heads=2)
  m.generator.update(base_channels=16, min_channels=4)
  m.discriminator.update(base_channels=4, max_channels=16, hidden=16)
  m.discriminator.update(embed_dim=8)
  m.discriminator.text.update(width=16, depth=1, heads=2)
  m.seed.update(emb_dim=8, hidden_dim=16)
  config.data.update(num_threads=1, prefetch=1)
  config.train.update(steps=3, batch_size=4, log_every=1)
  config.train.update(checkpoint_every=3, sample_every=3, max_minutes=0.0)
  config.sample.num_per_prompt = 2
  return config


def _shapes_source(data_config, n=16):
  """The first ``n`` training scenes of the shapes at the config's resolution
  and language, in memory (without building the 50,000)."""
  from dallex.data.shapes_builder import example
  from dallex.data.sources import Source

  data = []
  for i in range(n):
    x = example("train", i, data_config.resolution, data_config.language)
    data.append({"image": x["image"], "caption": [x["caption"]]})
  return Source(data, "image", "caption")


@pytest.mark.parametrize("name", NAMES)
def test_config_trains_three_steps_and_samples(
    name, small_folder, tmp_path, monkeypatch
):
  """Each shipped config, at test sizes, on data of its own kind: the shapes
  in its language, a caption folder, or COCO's layout from TFDS mock data."""
  from dallex import loop

  config = _tiny_sizes(
      importlib.import_module(f"experiments.configs.{name}").get_config()
  )
  data = config.data
  mock = contextlib.nullcontext()
  if data.name == "dallex_shapes":
    monkeypatch.setattr(
        loop.sources, "open_source", lambda d, split: _shapes_source(d)
    )
  elif data.name == "caption_folder":
    data.path = str(small_folder)
  else:
    assert data.name == "coco_captions", name
    # The real builder imports TensorFlow; this one has coco_captions' features.
    import test_sources  # noqa: F401  (registers fake_coco_captions)

    data.update(name="fake_coco_captions", data_dir=str(tmp_path / "tfds"))
    # TFDS 4.9's mock sets __getitems__ (which MagicMock does not treat as a
    # magic method) unbound, so the keys arrive as its `self`.
    from tensorflow_datasets.testing import mocking

    monkeypatch.setattr(
        mocking,
        "_getitems",
        lambda *args, generator, serialized=False: [
            generator[k] for k in args[-1]
        ],
    )
    mock = tfds.testing.mock_data(
        num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE
    )
  with mock:
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["step"] == 3 and summary["stopped_by"] is None
  rows = [json.loads(line) for line in open(summary["metrics"])]
  assert [r["step"] for r in rows] == [1, 2, 3]
  losses = [v for r in rows for k, v in r.items() if k.endswith("loss")]
  assert losses and np.all(np.isfinite(losses)), rows
  grid = np.asarray(PIL.Image.open(summary["samples"]))
  scale = max(1, 64 // data.resolution)
  side = scale * (data.resolution + 2)
  prompts = len(config.sample.prompts)
  assert grid.shape == (prompts * side + scale * 2, 2 * side + scale * 2, 3)
  # The first prompt's first image.
  first = grid[2 * scale : side, 2 * scale : side]
  assert first.shape[:2] == (scale * data.resolution,) * 2 and first.std() > 0
