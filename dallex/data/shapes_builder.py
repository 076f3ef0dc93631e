"""TFDS builder ``dallex_shapes``: the built-in captioned-shapes dataset, built offline.

Every example is drawn from its own generator seeded by (split, index), so a
build is deterministic and byte-identical however often it runs. Images are
stored as ``Tensor(uint8)`` so neither writing nor reading needs TensorFlow.

    builder = DallexShapes(config="r32", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare()
    source = builder.as_data_source(split="train")
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from dallex.data import shapes
from dallex.data.array_record_builder import ArrayRecordBuilder

_SEED = 20261124
_SPLIT_IDS = {"train": 0, "test": 1, "heldout": 2}
RESOLUTIONS = (32, 64)
CAPTION_LANGUAGES = (*shapes.LANGUAGES, "mixed")


def config_name(resolution: int, language: str = "en") -> str:
  """The builder config of a resolution and caption language: ``r32``,
  ``r32_zh``, ``r64_mixed``...

  Raises:
    ValueError: naming ``data.resolution`` or ``data.language`` when no
      build has it.
  """
  if resolution not in RESOLUTIONS:
    raise ValueError(
        f"data.resolution={resolution}: dallex_shapes is made at "
        f"{' and '.join(map(str, RESOLUTIONS))} px only"
    )
  if language not in CAPTION_LANGUAGES:
    raise ValueError(
        f"data.language={language!r}: dallex_shapes captions are in one of "
        f"{list(CAPTION_LANGUAGES)}"
    )
  return f"r{resolution}" + ("" if language == "en" else f"_{language}")


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Resolution, caption language and split sizes of one build.

  ``language`` is a key of ``shapes.GRAMMARS``, or ``mixed``: each scene
  captioned in either language at random. The scenes and images are the same
  in every language.
  """

  resolution: int = 32
  language: str = "en"
  num_train: int = 50_000
  num_test: int = 2_000
  num_heldout: int = 1_000


def example(split: str, index: int, resolution: int, language: str) -> dict:
  """Example ``index`` of ``split`` as the builder writes it: ``image``
  [R, R, 3] uint8, ``caption``, ``num_objects``, ``objects`` (features).
  Each comes from its own generator, so any one can be made alone."""
  rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
  first_pairs = shapes.HELDOUT_PAIRS if split == "heldout" else None
  objects = shapes.sample_scene(rng, resolution, first_pairs=first_pairs)
  if language == "mixed":
    # Drawn after the scene, so the scene is the one every language has.
    language = shapes.LANGUAGES[int(rng.random() * len(shapes.LANGUAGES))]
  return {
      "image": shapes.render(objects, resolution),
      "caption": shapes.caption(objects, language),
      "num_objects": len(objects),
      "objects": shapes.objects_to_features(objects),
  }


class DallexShapes(ArrayRecordBuilder):
  """Captioned scenes of coloured circles, squares and triangles on a 3x3 grid."""

  BUILDER_CONFIGS = [
      ShapesConfig(
          name=config_name(resolution, language),
          resolution=resolution,
          language=language,
          description=f"{resolution}x{resolution} pixels, {language} captions",
      )
      for resolution in RESOLUTIONS
      for language in CAPTION_LANGUAGES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "r32"

  def _info(self) -> tfds.core.DatasetInfo:
    column = lambda dtype, *shape: tfds.features.Tensor(
        shape=(shapes.MAX_OBJECTS, *shape), dtype=dtype
    )
    return self.info_with(
        __doc__,
        caption=tfds.features.Text(),
        num_objects=np.int32,
        # Fixed-size, padded columns (a TFDS Sequence costs 2x the build and
        # read time). Labels index shapes.COLOURS/SHAPES/SIZES/CELLS; padding is -1.
        objects=tfds.features.FeaturesDict(
            dict(
                colour=column(np.int32),
                shape=column(np.int32),
                size=column(np.int32),
                cell=column(np.int32),
                rgb=column(np.uint8, 3),
                center=column(np.float32, 2),
                side=column(np.float32),
            )
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", cfg.num_train),
        "test": self._generate_examples("test", cfg.num_test),
        "heldout": self._generate_examples("heldout", cfg.num_heldout),
    }

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    for index in range(num):
      yield f"{split}-{index:07d}", example(
          split, index, cfg.resolution, cfg.language
      )
