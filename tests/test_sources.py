"""Upstream TFDS caption datasets through the same source and pipeline, with mock data."""

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import one_shard_dataset
from dallex.config import default_config
from dallex.data import sources


class FakeCocoCaptions(tfds.core.GeneratorBasedBuilder):
  """The feature layout of TFDS's coco_captions (image + a sequence of captions)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/id": np.int64,
                "captions": tfds.features.Sequence(
                    {"text": tfds.features.Text(), "id": np.int64}
                ),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield 0, {}


def _config(name, **kwargs):
  """The default data config for the dataset ``name`` at 16 px."""
  config = default_config().data
  config.update(
      dict(name=name, resolution=16, data_dir="/nonexistent") | kwargs
  )
  return config


def _mock_data(num_examples):
  """TFDS's mock data for any dataset, drawn from its features."""
  return tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
  )


def test_tfds_caption_dataset_feeds_the_pipeline():
  with _mock_data(12):
    source = sources.open_source(_config("fake_coco_captions"), "train")
    image, captions = source.extract(source.data[0])
    assert image.dtype == np.uint8 and image.ndim == 3
    assert captions and all(isinstance(c, str) for c in captions)
    batch = next(iter(one_shard_dataset(source, resolution=16, max_length=24)))
  assert (
      batch["image"].shape == (4, 16, 16, 3)
      and batch["image"].dtype == np.float32
  )
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["ids"].shape == (4, 24) and batch["mask"].any(axis=1).all()


def test_wrong_field_names_are_named_in_the_error():
  with _mock_data(2):
    source = sources.open_source(_config("fake_coco_captions"), "train")
    bad = sources.Source(source.data, "image", "caption")
    with pytest.raises(KeyError, match="no field 'caption'; its fields are"):
      bad.extract(source.data[0])


def test_builtin_names_dispatch(full_shapes_r32):
  config = _config("dallex_shapes", data_dir=str(full_shapes_r32.data_dir_root))
  config.resolution = 32
  source = sources.open_source(config, "test[:5]")
  image, captions = source.extract(source.data[0])
  assert image.shape == (32, 32, 3) and captions[0].startswith("a ")
  with pytest.raises(ValueError, match="needs data.path"):
    sources.open_source(_config("caption_folder", path=""), "train")
  config.resolution = 48
  with pytest.raises(
      ValueError, match="resolution=48: dallex_shapes is made at 32 and 64 px"
  ):
    sources.open_source(config, "test[:5]")
  config.resolution, config.language = 32, "fr"
  with pytest.raises(
      ValueError, match=r"data.language='fr': .* one of \['en', 'zh', 'mixed'\]"
  ):
    sources.open_source(config, "test[:5]")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="TFDS's own coco_captions builder imports TensorFlow (pip install 'dallex[tf]')",
)
def test_real_coco_captions_builder_with_mock_data():
  with _mock_data(4):
    source = sources.open_source(_config("coco_captions"), "train")
    image, captions = source.extract(source.data[0])
  assert image.ndim == 3 and captions
