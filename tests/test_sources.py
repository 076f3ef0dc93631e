"""Upstream TFDS caption datasets through the same source and pipeline, with mock data."""

import importlib.util

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dallex.data import pipeline, sources


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
  return ml_collections.ConfigDict(
      dict(
          name=name,
          resolution=16,
          data_dir="/nonexistent",
          image_key="image",
          caption_key="captions/text",
          **kwargs,
      )
  )


def test_tfds_caption_dataset_feeds_the_pipeline():
  with tfds.testing.mock_data(
      num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    source = sources.open_source(_config("fake_coco_captions"), "train")
    image, captions = source.extract(source.data[0])
    assert image.dtype == np.uint8 and image.ndim == 3
    assert captions and all(isinstance(c, str) for c in captions)
    ds = pipeline.make_dataset(
        source,
        batch_size=4,
        resolution=16,
        max_length=24,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    batch = next(iter(ds))
  assert (
      batch["image"].shape == (4, 16, 16, 3)
      and batch["image"].dtype == np.float32
  )
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["ids"].shape == (4, 24) and batch["mask"].any(axis=1).all()


def test_wrong_field_names_are_named_in_the_error():
  with tfds.testing.mock_data(
      num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    source = sources.open_source(_config("fake_coco_captions"), "train")
    bad = sources.Source(source.data, "image", "caption")
    with pytest.raises(KeyError, match="no field 'caption'; its fields are"):
      bad.extract(source.data[0])


def test_builtin_names_dispatch(full_shapes_r32):
  config = _config(
      "dallex_shapes",
  )
  config.resolution = 32
  config.data_dir = str(full_shapes_r32.data_dir_root)
  source = sources.open_source(config, "test[:5]")
  image, captions = source.extract(source.data[0])
  assert image.shape == (32, 32, 3) and captions[0].startswith("a ")
  with pytest.raises(ValueError, match="needs data.path"):
    sources.open_source(_config("caption_folder", path=""), "train")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="TFDS's own coco_captions builder imports TensorFlow (pip install 'dallex[tf]')",
)
def test_real_coco_captions_builder_with_mock_data():
  with tfds.testing.mock_data(
      num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    source = sources.open_source(_config("coco_captions"), "train")
    image, captions = source.extract(source.data[0])
  assert image.ndim == 3 and captions
