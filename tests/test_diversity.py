"""The diversity measure: the checker's measured centre and colour, and the spread ratios."""

import numpy as np
import pytest

from dallex.data import shapes
from dallex.evaluation import alignment, diversity


def _captions(n, rng):
  """n random one- and two-object scenes' intended objects."""
  return [
      [
          {a: getattr(o, a) for a in alignment.ATTRIBUTES}
          for o in shapes.sample_scene(rng, 32)
      ]
      for _ in range(n)
  ]


def test_the_checker_measures_centre_side_and_colour_of_what_was_drawn():
  rng = np.random.default_rng(0)
  for shape in ("circle", "square"):
    for _ in range(10):
      obj = shapes.place_scene(rng, [("red", shape, "large", "center")], 32)[0]
      (found,) = alignment.detect(shapes.render([obj], 32))
      # Symmetric shapes: the centroid is the box centre (to half a pixel).
      np.testing.assert_allclose(
          found.center, np.array(obj.center) * 32, atol=0.5
      )
      np.testing.assert_allclose(found.rgb, obj.rgb)
      assert abs(found.side - obj.side) * 32 < 1.0


def test_real_renders_spread_like_the_spec_and_identical_images_not_at_all():
  intended = _captions(30, np.random.default_rng(1))
  a = diversity.real_renders(intended, 16, 32, np.random.default_rng(2))
  b = diversity.real_renders(intended, 16, 32, np.random.default_rng(3))
  assert a.shape == (30, 16, 32, 32, 3) and not np.array_equal(a, b)
  real_a, real_b = diversity.spread(a, intended), diversity.spread(b, intended)
  # Position jitter is +-0.04 of 32 px (uniform: std 0.74 px); colour +-12 (std 7).
  assert 0.5 < real_a["centre"] < 1.0 and 5.0 < real_a["colour"] < 9.0
  assert real_a["size"] > 0.3 and real_a["num_objects"] >= 40
  for ratio in diversity.ratios(real_b, real_a).values():
    assert 0.8 < ratio < 1.25
  # A model whose seeds all draw the same scene: no spread at all.
  same = np.repeat(a[:, :1], 16, axis=1)
  for ratio in diversity.ratios(
      diversity.spread(same, intended), real_a
  ).values():
    assert ratio < 1e-9
  # Half the jitter of position gives about half the centre spread.
  squeezed = a.copy()
  squeezed[:, 8:] = a[:, :1]
  assert diversity.spread(squeezed, intended)["centre"] < 0.8 * real_a["centre"]


def test_spread_refuses_images_that_do_not_match_the_captions():
  with pytest.raises(ValueError, match="C = 2 captions"):
    diversity.spread(np.zeros((3, 4, 32, 32, 3), np.uint8), [[], []])
