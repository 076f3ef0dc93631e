import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dallex import augment
from dallex.objective import build_objective


def _images(b=16, r=32, seed=0):
  # No zeros, so every 0 in an output was put there by the operation.
  return jnp.asarray(
      np.random.default_rng(seed).uniform(0.5, 1.0, (b, r, r, 3)), jnp.float32
  )


def _shifted(image, dy, dx):
  """``image`` [R, R, C] moved down dy and right dx, 0 where nothing came in."""
  r = image.shape[0]
  out = np.zeros_like(image)
  ys, xs = slice(max(dy, 0), r + min(dy, 0)), slice(max(dx, 0), r + min(dx, 0))
  yi, xi = slice(max(-dy, 0), r + min(-dy, 0)), slice(
      max(-dx, 0), r + min(-dx, 0)
  )
  out[ys, xs] = image[yi, xi]
  return out


def test_translation_moves_each_image_whole_by_its_own_shift_of_up_to_an_eighth():
  x = _images()
  out = np.asarray(augment.translation(x, jax.random.key(0)))
  shifts = []
  for image, moved in zip(np.asarray(x), out):
    found = [
        (dy, dx)
        for dy in range(-4, 5)
        for dx in range(-4, 5)
        if np.array_equal(moved, _shifted(image, dy, dx))
    ]
    assert len(found) == 1, "not a whole-pixel shift of at most 32 / 8"
    shifts.append(found[0])
  assert len(set(shifts)) > 4  # each image draws its own
  again = augment.translation(x, jax.random.key(0))
  np.testing.assert_array_equal(again, out)


def test_cutout_blanks_one_square_of_half_the_side_clipped_at_the_edges():
  x = _images()
  out = np.asarray(augment.cutout(x, jax.random.key(1)))
  clipped = 0
  for image, cut in zip(np.asarray(x), out):
    blank = (cut == 0).all(-1)
    rows, cols = np.nonzero(blank.any(1))[0], np.nonzero(blank.any(0))[0]
    # One full rectangle, at most 16 x 16, and only it changed.
    assert blank.sum() == len(rows) * len(cols) > 0
    assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
    assert len(rows) <= 16 and len(cols) <= 16
    np.testing.assert_array_equal(cut[~blank], image[~blank])
    clipped += (len(rows), len(cols)) != (16, 16)
  assert 0 < clipped < len(x)  # squares near an edge lose a part


def test_the_policy_chains_its_operations_and_gradients_pass_through():
  x = _images(4, 16)
  key = jax.random.key(2)
  np.testing.assert_array_equal(augment.augment(x, key, ""), x)
  both = augment.augment(x, key, "translation, cutout")
  by_hand = augment.cutout(
      augment.translation(x, jax.random.fold_in(key, 0)),
      jax.random.fold_in(key, 1),
  )
  np.testing.assert_array_equal(both, by_hand)
  # Linear in the images, so G's gradient passes back through: the gradient
  # g of <w, T(x)> is T's transpose applied to w, <g, x> = <w, T(x)>.
  w = _images(4, 16, seed=1)
  moved = lambda v: augment.augment(v, key, "translation,cutout")
  g = jax.grad(lambda v: (w * moved(v)).sum())(x)
  assert float((g * x).sum()) == pytest.approx(
      float((w * both).sum()), rel=1e-5
  )
  assert float((g != 0).mean()) < 1  # pixels blanked or moved out get none
  with pytest.raises(
      ValueError, match=r"loss.augment='colour': unknown \['colour'\]"
  ):
    augment.parse_policy("colour")
  config = tiny_config()
  config.loss.augment = "translation,flip"
  with pytest.raises(ValueError, match=r"unknown \['flip'\]"):
    build_objective(config)
