import io
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from dallex.data.caption_folder import CaptionFolderWarning, caption_folder_builder


def _snapshot(folder):
  return {
      os.path.join(d, f): (
          os.stat(os.path.join(d, f)).st_size,
          os.stat(os.path.join(d, f)).st_mtime_ns,
      )
      for d, _, files in os.walk(folder)
      for f in files
  }


def _write_metadata(folder, lines):
  with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture
def messy_folder(tmp_path):
  """Four good images in four modes, and one of each kind of bad entry."""
  folder = tmp_path / "my images"
  (folder / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(
      folder / "wide.png"
  )
  Image.fromarray(rng.integers(0, 255, (50, 50), np.uint8)).save(
      folder / "sub" / "gray.jpg"
  )
  Image.fromarray(rng.integers(0, 255, (30, 20, 4), np.uint8)).save(
      folder / "rgba.webp"
  )
  Image.fromarray(rng.integers(0, 255, (30, 20, 3), np.uint8)).convert(
      "P"
  ).save(folder / "pal.png")
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
      buffer, "PNG"
  )
  (folder / "truncated.png").write_bytes(
      buffer.getvalue()[: len(buffer.getvalue()) // 2]
  )
  (folder / "notes.jpg").write_text("this is a text file, not a JPEG")
  _write_metadata(
      folder,
      [
          json.dumps(
              {
                  "file_name": "wide.png",
                  "text": "a wide picture",
                  "label": "wide",
              }
          ),
          json.dumps(
              {"file_name": "sub/gray.jpg", "text": ["gray one", "gray two"]}
          ),
          json.dumps({"file_name": "rgba.webp", "text": "transparent"}),
          json.dumps({"file_name": "pal.png", "text": "palette"}),
          json.dumps({"file_name": "truncated.png", "text": "cut short"}),
          json.dumps({"file_name": "notes.jpg", "text": "not an image"}),
          json.dumps({"file_name": "missing.png", "text": "gone"}),
          '{"file_name": "wide.png", "text": ',
          json.dumps({"file_name": "../escape.png", "text": "outside"}),
          json.dumps({"file_name": "pal.png", "text": 42}),
          json.dumps({"file_name": "pal.png", "text": "p", "label": 7}),
      ],
  )
  return folder


def test_messy_folder_keeps_exactly_the_good_examples(
    messy_folder, tmp_path, capsys
):
  before = _snapshot(messy_folder)
  builder = caption_folder_builder(
      str(messy_folder), 32, str(tmp_path / "data")
  )
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    builder.download_and_prepare()
  messages = [
      str(w.message)
      for w in caught
      if issubclass(w.category, CaptionFolderWarning)
  ]
  for bad in [
      "metadata.jsonl line 8: malformed JSON",
      "truncated.png: unreadable image",
      "notes.jpg: unreadable image",
      "missing.png: file not found",
      "../escape.png) : the file lies outside".replace(") :", "):"),
      'line 10 (pal.png): "text" must be',
      'line 11 (pal.png): "label" must be a string',
  ]:
    assert sum(bad in m for m in messages) == 1, (bad, messages)
  assert len(messages) == 7
  assert "kept 4 examples, skipped 7" in capsys.readouterr().out

  source = builder.as_data_source(split="train")
  got = {source[i]["file_name"].decode(): source[i] for i in range(len(source))}
  assert sorted(got) == ["pal.png", "rgba.webp", "sub/gray.jpg", "wide.png"]
  for ex in got.values():
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
  assert {k: ex["label"].decode() for k, ex in got.items()} == {
      "wide.png": "wide",
      "pal.png": "",
      "rgba.webp": "",
      "sub/gray.jpg": "",
  }
  assert [c.decode() for c in got["sub/gray.jpg"]["captions"]] == [
      "gray one",
      "gray two",
  ]
  gray = got["sub/gray.jpg"]["image"].astype(int)
  assert (gray[..., 0] == gray[..., 1]).all() and (
      gray[..., 1] == gray[..., 2]
  ).all()
  # Nothing was written into the user's folder.
  assert _snapshot(messy_folder) == before


def test_center_crop_keeps_the_middle(tmp_path):
  folder = tmp_path / "crop"
  folder.mkdir()
  image = np.zeros((20, 60, 3), np.uint8)
  image[:, :20] = (255, 0, 0)  # left third: red, cropped away
  image[:, 20:40] = (0, 255, 0)  # middle: green, kept
  image[:, 40:] = (0, 0, 255)  # right third: blue, cropped away
  Image.fromarray(image).save(folder / "stripes.png")
  _write_metadata(
      folder, [json.dumps({"file_name": "stripes.png", "text": "green"})]
  )
  builder = caption_folder_builder(str(folder), 8, str(tmp_path / "data"))
  builder.download_and_prepare()
  out = builder.as_data_source(split="train")[0]["image"]
  np.testing.assert_array_equal(out.reshape(-1, 3).mean(0).round(), [0, 255, 0])


def test_folder_without_usable_examples_is_an_error(tmp_path):
  folder = tmp_path / "empty"
  folder.mkdir()
  (folder / "bad.png").write_text("nope")
  _write_metadata(folder, [json.dumps({"file_name": "bad.png", "text": "x"})])
  builder = caption_folder_builder(str(folder), 32, str(tmp_path / "data"))
  with (
      pytest.warns(CaptionFolderWarning),
      pytest.raises(ValueError, match="no usable example"),
  ):
    builder.download_and_prepare()


def test_missing_folder_metadata_and_bad_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    caption_folder_builder(str(tmp_path / "nope"), 32, str(tmp_path / "data"))
  folder = tmp_path / "no_meta"
  folder.mkdir()
  with pytest.raises(FileNotFoundError, match="has no metadata.jsonl"):
    caption_folder_builder(str(folder), 32, str(tmp_path / "data"))
  _write_metadata(folder, [])
  with pytest.raises(ValueError, match="lies inside the caption folder"):
    caption_folder_builder(str(folder), 32, str(folder / "tfds"))


def test_changed_folder_gets_a_new_build(messy_folder, tmp_path):
  first = caption_folder_builder(str(messy_folder), 32, str(tmp_path / "data"))
  with open(messy_folder / "metadata.jsonl", "a") as f:
    f.write(
        json.dumps({"file_name": "wide.png", "text": "another caption"}) + "\n"
    )
  second = caption_folder_builder(str(messy_folder), 32, str(tmp_path / "data"))
  assert first.builder_config.name != second.builder_config.name
  assert first.builder_config.name.startswith("my_images_")
