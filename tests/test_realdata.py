import math

import numpy as np
import pytest

from dallex.evaluation import realdata


def _scenes(n, rng, res=32):
  """n distinct images: a coloured square at a random place on grey noise."""
  images = rng.integers(0, 60, (n, res, res, 3), np.uint8)
  for im in images:
    y, x = rng.integers(0, res - 10, 2)
    im[y : y + 10, x : x + 10] = rng.integers(0, 256, 3)
  return images


def test_embedding_is_the_block_mean():
  images = np.zeros((1, 32, 32, 3), np.uint8)
  images[0, :2, :2] = [255, 0, 0]  # the first 2 x 2 block
  images[0, 0, 2] = [0, 0, 255]  # a quarter of the second block
  e = realdata.embed(images).reshape(16, 16, 3)
  np.testing.assert_allclose(e[0, 0], [1, 0, 0])
  np.testing.assert_allclose(e[0, 1], [0, 0, 0.25])
  assert e[1:].sum() == 0
  # Any side: each cell is the mean of the area it covers.
  flat = realdata.embed(np.full((2, 40, 40, 3), 90, np.uint8))
  np.testing.assert_allclose(flat, 90 / 255, rtol=1e-6)
  small = np.zeros((1, 8, 8, 3), np.uint8)
  small[0, 0, 0] = 255
  e = realdata.embed(small).reshape(16, 16, 3)
  np.testing.assert_allclose(e[:2, :2], 1.0)
  assert e[2:].sum() == 0 and e[:, 2:].sum() == 0


def test_retrieval_of_copies_is_perfect_and_of_shuffled_at_chance():
  rng = np.random.default_rng(0)
  real = _scenes(400, rng)
  captions = [f"scene {i}" for i in range(400)]
  copies = realdata.retrieval(real, captions, real, captions)
  assert copies["retrieval_top1"] == 1.0 and copies["retrieval_top5"] == 1.0
  assert copies["retrieval_top5_chance"] == pytest.approx(5 / 400)
  shuffled = realdata.retrieval(
      real[rng.permutation(400)], captions, real, captions
  )
  # Its nearest is its own copy, named by another caption; the other four
  # are random.
  assert shuffled["retrieval_top1"] <= 2 / 400
  assert shuffled["retrieval_top5"] <= 3 * shuffled["retrieval_top5_chance"]
  # Slightly changed copies are still found.
  noisy = np.clip(real + rng.integers(-8, 9, real.shape), 0, 255)
  found = realdata.retrieval(noisy.astype(np.uint8), captions, real, captions)
  assert found["retrieval_top1"] > 0.95


def test_retrieval_chance_counts_every_image_of_a_shared_caption():
  rng = np.random.default_rng(1)
  real = _scenes(10, rng)
  real_captions = ["pair"] * 3 + [f"one {i}" for i in range(7)]
  out = realdata.retrieval(real[:1], ["pair"], real, real_captions)
  # Any of the three counts as right; chance is 1 - C(7, 5) / C(10, 5).
  assert out["retrieval_top1"] == 1.0
  assert out["retrieval_top5_chance"] == pytest.approx(
      1 - math.comb(7, 5) / math.comb(10, 5)
  )
  with pytest.raises(ValueError, match="name no real image.*'absent'"):
    realdata.retrieval(real[:1], ["absent"], real, real_captions)


def _labelled(n_per, rng):
  """Three labels told apart by the square's colour."""
  colours = {
      "red": (230, 30, 30),
      "green": (30, 230, 30),
      "blue": (30, 30, 230),
  }
  images, labels = [], []
  for name, colour in colours.items():
    for im in _scenes(n_per, rng):
      mask = im.sum(-1) > 180
      im[mask] = colour
      images.append(im)
      labels.append(name)
  return np.stack(images), np.array(labels)


def test_classifier_reads_copies_and_not_shuffled_images():
  rng = np.random.default_rng(2)
  real, labels = _labelled(60, rng)
  copies = realdata.label_report(real, labels, real, labels)
  assert copies["classifier_chance"] == pytest.approx(1 / 3)
  assert copies["classifier_real"] > 0.9
  assert copies["classifier_generated"] > 0.95
  # Copies of the images the classifier was fit on score what the fit does.
  assert copies["classifier_fit"] == copies["classifier_generated"]
  shuffled = realdata.label_report(
      real, labels[rng.permutation(len(labels))], real, labels
  )
  assert abs(shuffled["classifier_generated"] - 1 / 3) < 0.12
  # It reads the real images alone, whatever the generated ones are.
  assert shuffled["classifier_fit"] == copies["classifier_fit"]


def test_classifier_leaves_out_rare_and_missing_labels():
  rng = np.random.default_rng(3)
  real, labels = _labelled(30, rng)
  labels = labels.astype(object)
  labels[:5] = "rare"  # 5 images: under min_count
  labels[5:10] = ""
  out = realdata.label_report(real, labels, real, labels, min_count=10)
  assert out["classifier_labels"] == 3 and out["classifier_generated"] > 0.9
  # Too few images of every label: nothing to classify, and no error.
  assert realdata.label_report(real, labels, real, labels, min_count=100) == {
      "classifier_labels": 0
  }
