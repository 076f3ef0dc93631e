import json

import numpy as np
import pytest

from dallex.config import default_config
from dallex.data import caption_folder, openmoji
from dallex.evaluation import suite

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
    '<circle cx="36" cy="36" r="20" fill="#ff0000"/></svg>'
)
PLANTED = {
    "1F600": ("grinning face", "Smileys & Emotion"),
    "1F1EF-1F1F5": ("flag Japan", "Flags"),
    "1F44B-1F3FD": ("waving hand medium skin tone", "People & Body"),
    "1F468-200D-1F4BB": ("man technologist", "People & Body"),
    "002D": ("hyphen-minus", ""),
}


@pytest.fixture
def svg_folder(tmp_path):
  folder = tmp_path / "svg"
  folder.mkdir()
  for code in [*PLANTED, "E000"]:  # E000: OpenMoji's own, no Unicode name
    (folder / f"{code}.svg").write_text(SVG)
  (folder / "README.txt").write_text("not an emoji")
  return folder


def test_catalogue_names_groups_and_leaves_out_the_unnamed(svg_folder):
  emoji, skipped = openmoji.catalogue(str(svg_folder))
  assert {e.code: (e.caption, e.group) for e in emoji} == PLANTED
  assert skipped == ["E000"]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    openmoji.catalogue(str(svg_folder / "absent"))


def test_written_folder_is_a_caption_folder_with_labels(svg_folder, tmp_path):
  emoji, _ = openmoji.catalogue(str(svg_folder))
  out = tmp_path / "out"
  assert (
      openmoji.write_caption_folder(emoji, str(svg_folder), str(out), 16) == 5
  )
  lines = [
      json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()
  ]
  assert len(lines) == 5
  entries, skipped = caption_folder.read_metadata(str(out))
  assert skipped == 0
  assert {e.file_name: (e.captions, e.label) for e in entries} == {
      f"{code}.png": ((caption,), group)
      for code, (caption, group) in PLANTED.items()
  }
  image = openmoji.render(str(svg_folder / "1F600.svg"), 16)
  pixels = np.asarray(image)
  assert pixels.shape == (16, 16, 3)
  assert tuple(pixels[8, 8]) == (255, 0, 0)  # the circle
  assert tuple(pixels[0, 0]) == (255, 255, 255)  # white, not transparent
  assert "CC BY-SA 4.0" in (out / openmoji.ATTRIBUTION_FILE).read_text()
  before = (out / "metadata.jsonl").read_bytes()
  with pytest.raises(FileExistsError, match="already holds metadata.jsonl"):
    openmoji.write_caption_folder(emoji, str(svg_folder), str(out), 16)
  assert (out / "metadata.jsonl").read_bytes() == before


def test_evaluation_reads_the_labels_of_the_prepared_folder(
    svg_folder, tmp_path
):
  emoji, _ = openmoji.catalogue(str(svg_folder))
  openmoji.write_caption_folder(emoji, str(svg_folder), str(tmp_path / "f"), 16)
  data = default_config().data
  data.update(
      name="caption_folder",
      path=str(tmp_path / "f"),
      resolution=16,
      data_dir=str(tmp_path / "tfds"),
  )
  eval_set = suite.load_eval_set(data, "train", num=10)
  assert dict(zip(eval_set.captions, eval_set.labels)) == dict(PLANTED.values())
  assert eval_set.images.shape == (5, 16, 16, 3)
