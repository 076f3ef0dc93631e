import filecmp
import os

import numpy as np
import pytest
from conftest import shapes_build

from dallex.data import shapes
from dallex.data.shapes_builder import DallexShapes, example


def _scenes(n, resolution=32, **kwargs):
  rng = np.random.default_rng(0)
  return [shapes.sample_scene(rng, resolution, **kwargs) for _ in range(n)]


@pytest.mark.parametrize("resolution", [32, 64])
def test_scenes_follow_the_spec(resolution):
  counts = {1: 0, 2: 0}
  for objects in _scenes(400, resolution):
    counts[len(objects)] += 1
    assert len({o.cell for o in objects}) == len(objects)  # different cells
    masks = [shapes.object_mask(o, resolution) for o in objects]
    if len(masks) == 2:
      assert not (masks[0] & masks[1]).any()
      # At least one empty pixel between the objects (8-connectivity).
      padded = np.pad(masks[0], 1)
      grown = np.zeros_like(masks[0])
      for dy in range(3):
        for dx in range(3):
          grown |= padded[dy : dy + resolution, dx : dx + resolution]
      assert not (grown & masks[1]).any()
    for o, mask in zip(objects, masks):
      assert (
          np.abs(np.array(o.rgb) - shapes.COLOURS[o.colour])
          <= shapes.COLOUR_JITTER
      ).all()
      assert abs(o.side / shapes.SIZES[o.size] - 1) <= shapes.SIZE_JITTER + 1e-9
      cx, cy = shapes.cell_center(o.cell)
      assert abs(o.center[0] - cx) <= shapes.POSITION_JITTER + 1e-9
      assert abs(o.center[1] - cy) <= shapes.POSITION_JITTER + 1e-9
      ys, xs = np.nonzero(mask)
      extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
      # Rasterising loses < 1 px per side.
      assert abs(extent - o.side * resolution) <= 2
    image = shapes.render(objects, resolution)
    # Hard edges: every pixel is black or exactly one object's colour.
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours == {(0, 0, 0)} | {o.rgb for o in objects}
  assert min(counts.values()) > 150  # about half each


def test_shape_masks_differ_as_drawn():
  base = dict(
      colour="red",
      size="large",
      cell="center",
      rgb=(220, 40, 40),
      center=(0.5, 0.5),
      side=0.3,
  )
  area = {
      s: shapes.object_mask(shapes.ShapeObject(shape=s, **base), 64).sum()
      for s in shapes.SHAPES
  }
  side = 0.3 * 64
  assert abs(area["square"] / side**2 - 1) < 0.1
  assert abs(area["circle"] / (np.pi * side**2 / 4) - 1) < 0.1
  assert abs(area["triangle"] / (side**2 / 2) - 1) < 0.1
  tri = shapes.object_mask(shapes.ShapeObject(shape="triangle", **base), 64)
  rows = tri.sum(axis=1)[tri.any(axis=1)]
  assert rows[0] < rows[-1]  # pointing up: narrow at the top


def test_caption_round_trip_and_rejection():
  for objects in _scenes(200):
    text = shapes.caption(objects)
    assert text.startswith("a ")
    assert shapes.parse_caption(text) == [
        dict(colour=o.colour, shape=o.shape, size=o.size, cell=o.cell)
        for o in objects
    ]
  assert shapes.caption(_scenes(1)[0][:1]).count(" and ") == 0
  for bad in [
      "a huge red circle on the left",
      "a small red circle",
      "two red circles",
      "a small red circle on the left and",
  ]:
    with pytest.raises(ValueError, match="not a canonical shapes caption"):
      shapes.parse_caption(bad)


def test_chinese_captions_round_trip_and_are_rejected_by_name():
  for objects in _scenes(200):
    text = shapes.caption(objects, "zh")
    assert not text.isascii() and shapes.caption_language(text) == "zh"
    assert shapes.parse_caption(text) == shapes.parse_caption(
        shapes.caption(objects)
    )
    # 96 bytes is the default config's text length: no caption is cut.
    assert len(text.encode()) < 96
  assert (
      shapes.caption(
          [
              shapes.ShapeObject(
                  "red", "circle", "small", "left", (0,) * 3, (0.2, 0.5), 0.2
              ),
              shapes.ShapeObject(
                  "blue",
                  "square",
                  "large",
                  "top right",
                  (0,) * 3,
                  (0.8, 0.2),
                  0.3,
              ),
          ],
          "zh",
      )
      == "左边有一个红色的小圆形，右上角有一个蓝色的大正方形"
  )
  for bad in [
      "左边有一个粉色的小圆形",
      "左边有一个红色的小圆形，",
      "一个红色的小圆形",
  ]:
    with pytest.raises(ValueError, match="有一个"):
      shapes.parse_caption(bad)
  with pytest.raises(ValueError, match="unknown caption language 'fr'"):
    shapes.caption(_scenes(1)[0], "fr")


def test_unknown_attribute_is_rejected():
  with pytest.raises(ValueError, match="unknown colour 'pink'"):
    shapes.ShapeObject(
        "pink", "circle", "small", "top", (0, 0, 0), (0.5, 0.5), 0.2
    )


def _examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_builds_are_byte_identical(tiny_shapes, tmp_path):
  builder, data_dir = tiny_shapes
  again = DallexShapes(config=builder.builder_config, data_dir=str(tmp_path))
  again.download_and_prepare()
  for split in ("train", "test", "heldout"):
    files = sorted(f for f in os.listdir(builder.data_dir) if f"-{split}." in f)
    assert files and files == sorted(
        f for f in os.listdir(again.data_dir) if f"-{split}." in f
    )
    for name in files:
      assert filecmp.cmp(
          os.path.join(builder.data_dir, name),
          os.path.join(again.data_dir, name),
          shallow=False,
      )


def test_chinese_and_mixed_builds_caption_the_same_scenes(
    tiny_shapes, tmp_path
):
  builder, _ = tiny_shapes
  english = _examples(builder, "test")
  said = {}
  for language in ("zh", "mixed"):
    other = shapes_build(
        tmp_path, f"r32_tiny_{language}", 32, len(english), 1, 1, language
    )
    examples = _examples(other, "test")
    assert len(examples) == len(english)
    for ex, en in zip(examples, english):
      np.testing.assert_array_equal(ex["image"], en["image"])
      assert shapes.parse_caption(
          ex["caption"].decode()
      ) == shapes.parse_caption(en["caption"].decode())
    said[language] = [
        shapes.caption_language(ex["caption"].decode()) for ex in examples
    ]
  assert set(said["zh"]) == {"zh"}
  # 100 scenes, each in either language with probability 1/2.
  assert 30 <= said["mixed"].count("zh") <= 70


def test_examples_agree_with_their_objects_and_pixels(tiny_shapes):
  builder, _ = tiny_shapes
  for split in ("train", "test", "heldout"):
    built = _examples(builder, split)
    # The split holds example(split, i) for each i, in some order; the
    # built captions come back as bytes.
    made = [example(split, i, 32, "en") for i in range(len(built))]
    assert sorted((ex["caption"], ex["image"].tobytes()) for ex in built) == (
        sorted((ex["caption"].encode(), ex["image"].tobytes()) for ex in made)
    )
    for ex in built:
      objects = shapes.objects_from_features(ex["objects"], ex["num_objects"])
      assert shapes.parse_caption(ex["caption"].decode()) == objects
      rebuilt = [
          shapes.ShapeObject(
              o["colour"],
              o["shape"],
              o["size"],
              o["cell"],
              tuple(int(c) for c in ex["objects"]["rgb"][i]),
              tuple(float(c) for c in ex["objects"]["center"][i]),
              float(ex["objects"]["side"][i]),
          )
          for i, o in enumerate(objects)
      ]
      np.testing.assert_array_equal(ex["image"], shapes.render(rebuilt, 32))
      assert (ex["objects"]["colour"][len(objects) :] == -1).all()


def _pairs(example):
  objects = shapes.objects_from_features(
      example["objects"], example["num_objects"]
  )
  return {(o["colour"], o["shape"]) for o in objects}


def test_full_r32_build_sizes_and_heldout_pairs(full_shapes_r32):
  """The real 32-pixel build: split sizes, and the held-out pairs only in `heldout`."""
  builder = full_shapes_r32
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert (
      sizes["train"] >= 50_000
      and sizes["test"] >= 2_000
      and sizes["heldout"] >= 1_000
  )
  heldout = set(shapes.HELDOUT_PAIRS)
  for split in ("train", "test"):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      assert not _pairs(source[i]) & heldout, (split, i, source[i]["caption"])
  source = builder.as_data_source(split="heldout")
  assert all(_pairs(source[i]) & heldout for i in range(len(source)))
