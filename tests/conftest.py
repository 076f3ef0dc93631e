"""Shared fixtures: small datasets built once per test session."""

import os

import pytest

# Tests must not touch the user's ~/tensorflow_datasets.
os.environ.setdefault("DALLEX_DATA_DIR", "/nonexistent-dallex-data-dir")


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
  """A small ``dallex_shapes`` build at 32 px: (builder, data_dir)."""
  from dallex.data.shapes_builder import DallexShapes, ShapesConfig
  data_dir = str(tmp_path_factory.mktemp("tiny_shapes"))
  config = ShapesConfig(name="r32_tiny", resolution=32, num_train=600, num_test=100,
                        num_heldout=100)
  builder = DallexShapes(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder, data_dir


@pytest.fixture(scope="session")
def full_shapes_r32(tmp_path_factory):
  """The real 32-pixel ``dallex_shapes`` build (about 30 s): the builder."""
  from dallex.data.shapes_builder import DallexShapes
  builder = DallexShapes(config="r32", data_dir=str(tmp_path_factory.mktemp("shapes_r32")))
  builder.download_and_prepare()
  return builder
