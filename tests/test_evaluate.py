"""R-precision, and the evaluation report's table and worst-samples sheet."""

import numpy as np
import pytest
from PIL import Image

from dallex.config import default_config
from dallex.evaluation import rprecision, suite


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_r_precision_perfect_chance_and_never_its_own_caption():
  rng = np.random.default_rng(0)
  text = _unit(rng.normal(size=(200, 64)))
  ids = rng.integers(0, 200, 500)
  perfect, margins = rprecision.r_precision(
      text[ids], ids, text, num_distractors=99
  )
  assert perfect == 1.0 and np.all(margins > 0)
  chance, _ = rprecision.r_precision(
      _unit(rng.normal(size=(2000, 64))),
      rng.integers(0, 200, 2000),
      text,
      num_distractors=9,
  )
  assert chance == pytest.approx(0.1, abs=0.03)
  # With 2 captions the only distractor is the other one: never the true caption.
  two = _unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
  value, margins = rprecision.r_precision(two[[0, 1, 1]], [0, 1, 1], two)
  assert value == 1.0 and np.allclose(margins, 1.0)
  with pytest.raises(ValueError, match="at least 2 distinct captions"):
    rprecision.r_precision(two[:1], [0], two[:1])


def test_worst_samples_sheet_and_table(tmp_path):
  images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 200, 100)])
  result = suite.Evaluation(
      {"object_accuracy": 0.5},
      images,
      ["a", "b", "c"],
      np.array([0.5, -1.0, 0.0]),
      ["", "#1 colour", "right"],
  )
  path = suite.worst_samples_png(
      result, str(tmp_path / "w" / "worst.png"), num=2, scale=4, columns=2
  )
  sheet = np.asarray(Image.open(path))
  # Worst first: image 1 (score -1), then image 2 (score 0).
  assert (sheet[4:36, 4:36] == 200).all() and (
      sheet[4:36, 168:200] == 100
  ).all()
  table = suite.format_table(
      {
          "test": {"object_accuracy": 0.5, "num_images": 3},
          "heldout": {"object_accuracy": 0.25},
      }
  )
  lines = table.splitlines()
  assert lines[0].split() == ["test", "heldout"]
  assert lines[1].split() == ["object_accuracy", "0.5000", "0.2500"]
  assert lines[2].split() == ["num_images", "3", "-"]


class _CopySampler:
  """Stands in for a trained sampler: 'generates' the eval set's own images."""

  d_params = None

  def __init__(self, images):
    self.images = images

  def generate(self, captions, seed=0, batch_size=64):
    del seed, batch_size
    return self.images[: len(captions)]


def test_fid_of_the_real_images_is_zero_and_their_features_are_cached(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
  eval_set = suite.EvalSet("toy/test", ["caption"] * 60, None, images)
  calls = []

  def features(
      batch,
  ):  # a stand-in feature network: 16 fixed random projections
    calls.append(len(batch))
    flat = batch.reshape(len(batch), -1).astype(np.float64) / 255.0
    return flat @ np.random.default_rng(1).normal(size=(flat.shape[1], 16))

  kwargs = dict(
      inception=features, inception_id="toy-weights", fid_cache=str(tmp_path)
  )
  result = suite.evaluate(_CopySampler(images), eval_set, **kwargs)
  assert abs(result.metrics["fid"]) < 1e-6
  same_kid = result.metrics["kid"]
  assert "object_accuracy" not in result.metrics and result.scores is None
  first_calls = len(calls)
  shifted = np.clip(images.astype(int) + 60, 0, 255).astype(np.uint8)
  result = suite.evaluate(_CopySampler(shifted), eval_set, **kwargs)
  # The real images' features came from the cache: only the generated ones were computed.
  assert len(calls) == first_calls + first_calls // 2
  assert result.metrics["fid"] > 1.0 and result.metrics["kid"] > same_kid + 1.0


def test_caption_folder_data_is_measured_against_its_real_images(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (80, 16, 16, 3), dtype=np.uint8)
  images[1::2] //= 4  # labels the classifier can see: half are dark
  images[::2] = 192 + images[::2] // 4
  labels = ["light", "dark"] * 40
  captions = [f"picture {i}" for i in range(80)]
  eval_set = suite.EvalSet("folder/train", captions, None, images, labels)
  copies = suite.evaluate(_CopySampler(images), eval_set).metrics
  assert copies["retrieval_top1"] == 1.0
  assert copies["retrieval_top5_chance"] == pytest.approx(5 / 80)
  assert copies["classifier_generated"] == 1.0
  assert copies["classifier_chance"] == 0.5
  reversed_ = suite.evaluate(_CopySampler(images[::-1]), eval_set)
  assert reversed_.metrics["retrieval_top1"] == 0.0
  # Every dark one reads light and every light one dark.
  assert reversed_.metrics["classifier_generated"] == 0.0
  path = suite.pairs_png(
      reversed_, eval_set, str(tmp_path / "pairs.png"), num=2, scale=1
  )
  sheet = np.asarray(Image.open(path))
  # The first and the last caption, each real image left of its generated one.
  np.testing.assert_array_equal(sheet[4:20, 4:20], images[0])
  np.testing.assert_array_equal(sheet[4:20, 24:40], images[79])
  right = 4 + 164  # the second tile: 160 wide, 4 apart
  np.testing.assert_array_equal(sheet[4:20, right : right + 16], images[79])
  np.testing.assert_array_equal(sheet[4:20, right + 20 : right + 36], images[0])
  unlabelled = suite.EvalSet("folder/train", captions, None, images)
  assert (
      "classifier_generated"
      not in suite.evaluate(_CopySampler(images), unlabelled).metrics
  )


def test_a_mixed_run_is_evaluated_in_each_language():
  data = default_config().data
  data.language = "mixed"
  variants = suite.language_variants(data)
  assert [(s, d.language) for s, d in variants] == [
      ("/en", "en"),
      ("/zh", "zh"),
  ]
  assert data.language == "mixed"  # the run's own config is left as it was
  data.language = "zh"
  assert [(s, d.language) for s, d in suite.language_variants(data)] == [
      ("", "zh")
  ]
  with pytest.raises(ValueError, match="'fr': dallex_shapes captions are in"):
    suite.language_variants(data, ["en", "fr"])
  data.name = "caption_folder"
  assert suite.language_variants(data) == [("", data)]
  with pytest.raises(ValueError, match="dallex_shapes runs only"):
    suite.language_variants(data, ["zh"])
