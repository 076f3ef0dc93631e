"""TFDS builder ``caption_folder``: your own folder of captioned images.

The folder follows the Hugging Face ImageFolder convention::

    my_images/
      metadata.jsonl   {"file_name": "cat.png", "text": "a cat on a mat"}
      cat.png          {"file_name": "sub/dog.jpg", "text": ["a dog", "a brown dog"],
      sub/dog.jpg       "label": "animal"}

An optional ``label`` (a string, say the image's category) is kept for the
evaluation's classifier of real images (``dallex.evaluation.realdata``).

Images (png, jpg, jpeg, webp, any mode) are centre-cropped, resized to the
config's resolution and converted to RGB. A bad line or image is skipped with a
``CaptionFolderWarning`` naming it; the build ends with a report of kept and
skipped examples, and a folder with nothing usable is an error. The dataset is
written under ``data_dir``; nothing is ever written into the folder itself.

    builder = caption_folder_builder("my_images", resolution=64, data_dir=...)
    builder.download_and_prepare()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from dallex.data import images
from dallex.data.array_record_builder import ArrayRecordBuilder

METADATA_FILE = "metadata.jsonl"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class CaptionFolderWarning(UserWarning):
  """An entry of a caption folder was skipped."""


@dataclasses.dataclass
class CaptionFolderConfig(tfds.core.BuilderConfig):
  """Which folder, at which resolution."""

  path: str = ""
  resolution: int = 64


@dataclasses.dataclass(frozen=True)
class Entry:
  """One usable metadata record: a file inside the folder and its captions."""

  file_name: str
  captions: tuple[str, ...]
  label: str = ""


def _skip(what: str, why: str) -> None:
  warnings.warn(
      f"caption_folder: skipping {what}: {why}",
      CaptionFolderWarning,
      stacklevel=3,
  )


def _parse_captions(text) -> tuple[str, ...] | None:
  if isinstance(text, str):
    text = [text]
  if not isinstance(text, list) or not text:
    return None
  if not all(isinstance(t, str) and t.strip() for t in text):
    return None
  return tuple(t.strip() for t in text)


def metadata_path(folder: str) -> str:
  """The folder's metadata file; raises FileNotFoundError naming what is missing."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"caption folder {folder!r} does not exist or is not a directory"
    )
  path = os.path.join(folder, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"caption folder {folder!r} has no {METADATA_FILE}; expected one JSON object per "
        'line like {"file_name": "cat.png", "text": "a cat on a mat"}'
    )
  return path


def read_metadata(folder: str) -> tuple[list[Entry], int]:
  """Reads ``metadata.jsonl``, merging captions of repeated file names.

  Returns:
    The usable entries (in file order) and the number of lines skipped, each
    skipped line named in a ``CaptionFolderWarning``.

  Raises:
    FileNotFoundError: if the folder or its metadata file does not exist.
  """
  meta_path = metadata_path(folder)
  root = os.path.realpath(folder)
  entries: dict[str, list[str]] = {}
  labels: dict[str, str] = {}  # the first line's, for a repeated file name
  skipped = 0
  with open(meta_path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      where = f"{METADATA_FILE} line {number}"
      if not raw.strip():
        continue
      try:
        record = json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _skip(where, f"malformed JSON ({e})")
        skipped += 1
        continue
      if not isinstance(record, dict) or not isinstance(
          record.get("file_name"), str
      ):
        _skip(where, 'expected an object with a string "file_name"')
        skipped += 1
        continue
      name = record["file_name"]
      captions = _parse_captions(record.get("text"))
      if captions is None:
        _skip(
            f"{where} ({name})",
            '"text" must be a non-empty string or list of strings',
        )
        skipped += 1
        continue
      label = record.get("label", "")
      if not isinstance(label, str):
        _skip(f"{where} ({name})", '"label" must be a string')
        skipped += 1
        continue
      full = os.path.realpath(os.path.join(root, name))
      if os.path.commonpath([root, full]) != root:
        _skip(f"{where} ({name})", "the file lies outside the folder")
        skipped += 1
        continue
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        _skip(f"{where} ({name})", f"not an image extension {IMAGE_EXTENSIONS}")
        skipped += 1
        continue
      key = os.path.relpath(full, root)
      entries.setdefault(key, []).extend(captions)
      labels.setdefault(key, label.strip())
  return [
      Entry(name, tuple(caps), labels[name]) for name, caps in entries.items()
  ], skipped


def folder_fingerprint(folder: str) -> str:
  """A short hash of the metadata and every file's name, size and mtime, so a
  changed folder is built again rather than silently reused."""
  digest = hashlib.sha256()
  with open(metadata_path(folder), "rb") as f:
    digest.update(f.read())
  for dirpath, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      stat = os.stat(os.path.join(dirpath, name))
      digest.update(
          f"{os.path.relpath(os.path.join(dirpath, name), folder)}:"
          f"{stat.st_size}:{stat.st_mtime_ns}\n".encode()
      )
  return digest.hexdigest()[:12]


class CaptionFolder(ArrayRecordBuilder):
  """Images with captions from a local folder (see the module docstring)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Each example's label ('' when the metadata has none).",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.info_with(
        __doc__,
        captions=tfds.features.Sequence(tfds.features.Text()),
        file_name=tfds.features.Text(),
        label=tfds.features.Text(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    entries, skipped = read_metadata(self.builder_config.path)
    return {"train": self._generate_examples(entries, skipped)}

  def _generate_examples(self, entries: list[Entry], skipped: int) -> Iterator:
    folder = self.builder_config.path
    kept = 0
    for entry in entries:
      path = os.path.join(folder, entry.file_name)
      if not os.path.isfile(path):
        _skip(entry.file_name, "file not found")
        skipped += 1
        continue
      try:
        image = images.load_image(path, self.builder_config.resolution)
      # PIL raises many types for bad files; all mean "unusable".
      except Exception as e:
        _skip(entry.file_name, f"unreadable image ({type(e).__name__}: {e})")
        skipped += 1
        continue
      kept += 1
      yield entry.file_name, {
          "image": image,
          "captions": list(entry.captions),
          "file_name": entry.file_name,
          "label": entry.label,
      }
    report = (
        f"caption_folder {folder!r}: kept {kept} examples, skipped {skipped}"
    )
    logging.info(report)
    print(report, flush=True)
    if kept == 0:
      raise ValueError(
          f"caption folder {folder!r} has no usable example (skipped {skipped}); "
          "see the warnings above for why each entry was skipped"
      )


def caption_folder_builder(
    path: str, resolution: int, data_dir: str
) -> CaptionFolder:
  """The builder for one folder at one resolution.

  The config's name carries the folder's name and fingerprint, so each version
  of a folder gets its own prepared dataset under ``data_dir``.

  Raises:
    FileNotFoundError: if the folder or its metadata file is missing.
    ValueError: if ``data_dir`` lies inside the folder (nothing may be written there).
  """
  folder = os.path.realpath(os.path.expanduser(path))
  metadata_path(folder)
  data_dir = os.path.realpath(os.path.expanduser(data_dir))
  if os.path.commonpath([folder, data_dir]) == folder:
    raise ValueError(
        f"data_dir {data_dir!r} lies inside the caption folder {folder!r}; "
        "the folder is never written to, so choose a data_dir elsewhere"
    )
  slug = (
      re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder).lower()).strip("_")
      or "folder"
  )
  name = f"{slug}_{folder_fingerprint(folder)}_r{resolution}"
  config = CaptionFolderConfig(
      name=name,
      path=folder,
      resolution=resolution,
      description=f"caption folder {folder}",
  )
  return CaptionFolder(config=config, data_dir=data_dir)
