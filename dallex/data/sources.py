"""Random-access data sources: the built-in shapes, a caption folder, or any TFDS dataset.

Every source is read with ``tfds.data_source`` (``array_record``), which needs no
TensorFlow. A ``Source`` also says where an example keeps its image and its
caption(s), so one pipeline reads them all:

    source = open_source(config.data, split="train")
    image, captions = source.extract(source.data[0])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from dallex.data import caption_folder, shapes_builder

# An empty DALLEX_DATA_DIR counts as unset, not as the current directory.
DEFAULT_DATA_DIR = os.environ.get("DALLEX_DATA_DIR") or "~/tensorflow_datasets"


def _lookup(example: dict, key: str) -> Any:
  """``example["a"]["b"]`` for ``key="a/b"`` (TFDS nests features, e.g. ``captions/text``).

  A flat key that itself contains '/' (like ``image/id``) is found too."""
  if key in example:
    return example[key]
  head, _, rest = key.partition("/")
  if not rest or head not in example or not isinstance(example[head], dict):
    raise KeyError(
        f"example has no field {key!r}; its fields are {sorted(example)}"
    )
  return _lookup(example[head], rest)


def _to_str_list(value: Any, key: str) -> list[str]:
  values = value.tolist() if isinstance(value, np.ndarray) else value
  if not isinstance(values, (list, tuple)):
    values = [values]
  out = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
  if not out or not all(isinstance(v, str) for v in out):
    raise TypeError(
        f"field {key!r} must hold a caption string or a list of them, got {value!r:.80}"
    )
  return out


@dataclasses.dataclass(frozen=True)
class Source:
  """A random-access dataset and the names of its image and caption fields.

  Attributes:
    data: supports ``len`` and ``data[i] -> dict`` (a ``tfds.data_source``).
    image_key: '/'-separated path to a uint8 [H, W, C] image.
    caption_key: '/'-separated path to a caption string or a list of them.
  """

  data: Sequence[dict]
  image_key: str
  caption_key: str

  def extract(self, example: dict) -> tuple[np.ndarray, list[str]]:
    """The example's image (uint8 [H, W, C]) and its captions (>= 1 strings)."""
    image = np.asarray(_lookup(example, self.image_key))
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise TypeError(
          f"field {self.image_key!r} must be a uint8 image [H, W, C], "
          f"got {image.dtype} {image.shape}"
      )
    return image, _to_str_list(
        _lookup(example, self.caption_key), self.caption_key
    )


def _prepared(make_builder: Callable[[], Any], what: str) -> Any:
  """The builder ``make_builder()`` gives, its dataset built if missing. With
  several JAX processes, process 0 builds it while the others wait at a
  barrier; they make their builder after it (a builder reads the dataset's
  splits when made), then find it built on a shared ``data_dir`` or build
  their own on a local one."""
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      make_builder().download_and_prepare()
    multihost_utils.sync_global_devices(f"dallex: {what} ready")
  builder = make_builder()
  builder.download_and_prepare()
  return builder


def open_source(data_config, split: str) -> Source:
  """Opens (building first if needed) the dataset a config names. With
  several JAX processes every process must call it: process 0 builds a
  missing dataset while the others wait.

  Args:
    data_config: a ConfigDict with ``name`` (``dallex_shapes``, ``caption_folder``
      or any TFDS dataset name), ``resolution``, ``data_dir``, and for
      ``dallex_shapes`` ``language``, for ``caption_folder`` ``path``, for
      other TFDS datasets ``image_key`` and ``caption_key``.
    split: a TFDS split (``train``, ``test[:100]``, ...).
  """
  name = data_config.name
  data_dir = os.path.expanduser(data_config.data_dir or DEFAULT_DATA_DIR)
  if name == "dallex_shapes":
    config = shapes_builder.config_name(
        data_config.resolution, data_config.language
    )
    builder = _prepared(
        lambda: shapes_builder.DallexShapes(config=config, data_dir=data_dir),
        f"dallex_shapes {config}",
    )
    return Source(builder.as_data_source(split=split), "image", "caption")
  if name == "caption_folder":
    if not data_config.path:
      raise ValueError(
          "data.name='caption_folder' needs data.path, the folder of images "
          "and metadata.jsonl (--config.data.path=DIR)"
      )
    builder = _prepared(
        lambda: caption_folder.caption_folder_builder(
            data_config.path, data_config.resolution, data_dir
        ),
        f"caption folder {data_config.path}",
    )
    return Source(builder.as_data_source(split=split), "image", "captions")
  try:
    data = tfds.data_source(name, split=split, data_dir=data_dir)
  except ModuleNotFoundError as e:
    if "tensorflow" not in str(e):
      raise
    raise ModuleNotFoundError(
        f"building the TFDS dataset {name!r} needs TensorFlow: pip install 'dallex[tf]' "
        "(reading an already prepared array_record dataset does not)"
    ) from e
  return Source(data, data_config.image_key, data_config.caption_key)
