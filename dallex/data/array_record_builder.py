"""The base of dallex's TFDS builders: ``array_record`` files, read back by
``tfds.data_source`` with random access and no TensorFlow."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
  """A ``GeneratorBasedBuilder`` that writes ``array_record`` and keeps the
  generator's order: the input pipeline shuffles, seeded, and skipping TFDS's
  hash-shuffle pass halves the build time."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  disable_shuffling = True

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def info_with(self, description: str, **features) -> tfds.core.DatasetInfo:
    """The dataset's info: ``image``, uint8 [R, R, 3] at the config's
    resolution, then ``features``. Images are stored as zlib-compressed
    tensors: dark backgrounds compress about 10x, they serialise 3x faster
    than TFDS's default, and neither writing nor reading needs TensorFlow."""
    res = self.builder_config.resolution
    image = tfds.features.Tensor(
        shape=(res, res, 3), dtype=np.uint8, encoding="zlib"
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=tfds.features.FeaturesDict({"image": image, **features}),
    )
