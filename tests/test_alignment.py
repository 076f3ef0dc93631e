"""The shapes alignment checker: right on real images, and it catches planted errors."""

import dataclasses

import numpy as np
import pytest

from conftest import shapes_build
from dallex.data import shapes
from dallex.evaluation import alignment


def _scenes(builder, split="test"):
  data = builder.as_data_source(split=split)
  for i in range(len(data)):
    ex = data[i]
    n = int(ex["num_objects"])
    f = ex["objects"]
    objects = [
        shapes.ShapeObject(
            list(shapes.COLOURS)[f["colour"][k]],
            shapes.SHAPES[f["shape"][k]],
            list(shapes.SIZES)[f["size"][k]],
            shapes.CELLS[f["cell"][k]],
            tuple(int(c) for c in f["rgb"][k]),
            tuple(float(c) for c in f["center"][k]),
            float(f["side"][k]),
        )
        for k in range(n)
    ]
    yield ex, objects


def _intended(objects):
  return [
      dict(colour=o.colour, shape=o.shape, size=o.size, cell=o.cell)
      for o in objects
  ]


@pytest.fixture(scope="module")
def shapes_r64(tmp_path_factory):
  """The first 1,000 `test` and `heldout` examples of the 64-pixel build (each
  example is seeded by its split and index, so they are the full build's)."""
  return shapes_build(
      tmp_path_factory.mktemp("shapes_r64"), "r64_eval", 64, 1000, 1000
  )


@pytest.mark.parametrize(
    "resolution,split",
    [(32, "test"), (32, "heldout"), (64, "test"), (64, "heldout")],
)
def test_checker_is_right_on_real_images(resolution, split, request):
  builder = request.getfixturevalue(
      "full_shapes_r32" if resolution == 32 else "shapes_r64"
  )
  verdicts = []
  for ex, objects in _scenes(builder, split):
    assert ex["image"].shape == (resolution, resolution, 3)
    assert shapes.caption(objects) == ex["caption"].decode()
    verdicts.append(alignment.check(ex["image"], _intended(objects)))
  summary = alignment.summarize(verdicts)
  assert summary["num_objects"] >= 1000, summary
  assert summary["object_accuracy"] >= 0.99, summary
  assert summary["no_extra_rate"] >= 0.99, summary
  for a in alignment.ATTRIBUTES:
    assert summary[f"{a}_accuracy"] >= 0.99, (a, summary)


def _replace(objects, k, **changes):
  return [
      dataclasses.replace(o, **changes) if i == k else o
      for i, o in enumerate(objects)
  ]


def _plant(obj, others, attribute, rng):
  """obj with one attribute changed (and its drawing changed to match), or None if
  the change would not fit the scene."""
  if attribute == "colour":
    colour = rng.choice([c for c in shapes.COLOURS if c != obj.colour])
    return dataclasses.replace(obj, colour=colour, rgb=shapes.COLOURS[colour])
  if attribute == "shape":
    return dataclasses.replace(
        obj, shape=rng.choice([s for s in shapes.SHAPES if s != obj.shape])
    )
  if attribute == "size":
    size = "large" if obj.size == "small" else "small"
    new = dataclasses.replace(
        obj,
        size=size,
        side=obj.side * shapes.SIZES[size] / shapes.SIZES[obj.size],
    )
  else:
    taken = {o.cell for o in others}
    cell = rng.choice(
        [c for c in shapes.CELLS if c != obj.cell and c not in taken]
    )
    new = dataclasses.replace(obj, cell=cell, center=shapes.cell_center(cell))
  if all(shapes._separated(new, o, 32) for o in others):
    return new
  return None


@pytest.mark.parametrize("attribute", alignment.ATTRIBUTES)
def test_checker_flags_planted_errors(full_shapes_r32, attribute):
  """Redraw one object of a real scene with one attribute changed: the checker,
  told the original caption, must flag exactly that attribute of that object."""
  rng = np.random.default_rng(0)
  flagged, trials = 0, 0
  for _, objects in _scenes(full_shapes_r32):
    if trials == 60:
      break
    k = int(rng.integers(len(objects)))
    others = objects[:k] + objects[k + 1 :]
    planted = _plant(objects[k], others, attribute, rng)
    if planted is None:
      continue
    image = shapes.render(others + [planted], 32)
    verdict = alignment.check(image, _intended(objects))
    trials += 1
    wrong = {
        a for a in alignment.ATTRIBUTES if not getattr(verdict.objects[k], a)
    }
    others_right = all(v.right for i, v in enumerate(verdict.objects) if i != k)
    flagged += wrong == {attribute} and others_right and verdict.extra == 0
  assert trials == 60
  assert flagged >= 58, f"{attribute}: flagged {flagged} of {trials}"


def test_extra_and_missing_objects():
  red = shapes.ShapeObject(
      "red",
      "circle",
      "large",
      "left",
      shapes.COLOURS["red"],
      shapes.cell_center("left"),
      0.3,
  )
  blue = shapes.ShapeObject(
      "blue",
      "square",
      "small",
      "top right",
      shapes.COLOURS["blue"],
      shapes.cell_center("top right"),
      0.2,
  )
  both = shapes.render([red, blue], 32)
  verdict = alignment.check(both, _intended([red]))
  assert verdict.objects[0].right and verdict.extra == 1 and not verdict.right
  verdict = alignment.check(shapes.render([red], 32), _intended([red, blue]))
  assert verdict.objects[0].right and not verdict.objects[1].found
  assert not any(getattr(verdict.objects[1], a) for a in alignment.ATTRIBUTES)
  empty = alignment.check(np.zeros((32, 32, 3), np.uint8), _intended([red]))
  assert empty.detected == () and not empty.objects[0].found
  # Faint noise below the foreground threshold and single-pixel specks are not objects.
  noisy = both.copy()
  noisy[noisy.max(-1) == 0] = 40
  noisy[0, 31] = 255
  assert alignment.check(noisy, _intended([red, blue])).right


def test_summary_counts():
  right = alignment.ObjectVerdict(True, True, True, True, True)
  wrong_colour = alignment.ObjectVerdict(False, True, True, True, True)
  verdicts = [
      alignment.Verdict((right,), 0, ()),
      alignment.Verdict((right, wrong_colour), 0, ()),
      alignment.Verdict((right,), 1, ()),
  ]
  s = alignment.summarize(verdicts)
  assert s["colour_accuracy"] == 0.75 and s["object_accuracy"] == 0.75
  assert (
      s["one_object_accuracy"] == 1.0 and s["two_object_image_accuracy"] == 0.0
  )
  assert (
      s["two_object_accuracy"] == 0.5 and s["two_object_colour_accuracy"] == 0.5
  )
  assert (
      s["two_object_shape_accuracy"] == 1.0
      and s["one_object_colour_accuracy"] == 1.0
  )
  assert s["no_extra_rate"] == pytest.approx(2 / 3) and s[
      "image_accuracy"
  ] == pytest.approx(1 / 3)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r"image must be \[R, R, 3\]"):
    alignment.check(np.zeros((32, 32), np.uint8), [])
  with pytest.raises(TypeError, match="image must be uint8"):
    alignment.check(np.zeros((32, 32, 3), np.float32), [])
  with pytest.raises(ValueError, match=r"lacks \['cell'\]"):
    alignment.check(
        np.zeros((32, 32, 3), np.uint8),
        [dict(colour="red", shape="circle", size="small")],
    )
