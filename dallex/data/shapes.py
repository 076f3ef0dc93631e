"""The captioned-shapes world: its exact spec, a renderer, a scene sampler and captions.

Everything that judges generated images (the alignment checker) relies on this
spec, so the constants here are the single source of truth:

* black background; 1 or 2 objects (half each) in different cells of a 3x3 grid;
* objects never overlap and are separated by at least one empty pixel;
* colours are the ``COLOURS`` RGB values, each channel jittered by at most
  ``COLOUR_JITTER``;
* shapes are circle, square and an upward triangle, drawn with hard edges (a
  pixel is inside when its centre is);
* sizes are bounding-box sides of ``SIZES`` x canvas, +-``SIZE_JITTER``
  (relative);
* an object's centre is its cell's centre +-``POSITION_JITTER`` x canvas on
  each axis;
* captions read ``a {size} {colour} {shape} {place}``, joined by `` and ``;
  in Chinese (the seed article's language) ``{place}有一个{colour}的{size}{shape}``,
  joined by ``，`` (``GRAMMARS``).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 200),
    "cyan": (40, 200, 210),
    "white": (235, 235, 235),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.20, "large": 0.30}
# Row-major over the 3x3 grid; CELLS[i] sits at row i // 3, column i % 3.
CELLS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
PLACES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
# Colour-shape pairs that never occur in `train`; they make up the `heldout` split.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("yellow", "triangle"),
    ("blue", "circle"),
    ("white", "square"),
)

COLOUR_JITTER = 12
SIZE_JITTER = 0.10
POSITION_JITTER = 0.04
# Minimum distance, in pixels, between two objects' bounding boxes along some
# axis: 2 guarantees at least one empty row or column of pixels between them.
GAP_PIXELS = 2.0
MAX_OBJECTS = 2

# Each named attribute's possible values, in label order.
_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "cell": CELLS,
}

TRAIN_PAIRS = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_PAIRS
)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One object of a scene.

  Attributes:
    colour, shape, size, cell: the named attributes (keys of the spec tables).
    rgb: the jittered colour actually drawn.
    center: (x, y) of the bounding box's centre, as fractions of the canvas.
    side: the bounding box's side, as a fraction of the canvas.
  """

  colour: str
  shape: str
  size: str
  cell: str
  rgb: tuple[int, int, int]
  center: tuple[float, float]
  side: float

  def __post_init__(self):
    for field, table in _VALUES.items():
      if getattr(self, field) not in table:
        raise ValueError(
            f"unknown {field} {getattr(self, field)!r}; expected one of "
            f"{list(table)}"
        )


def cell_center(cell: str) -> tuple[float, float]:
  """(x, y) of a grid cell's centre as fractions of the canvas."""
  row, col = divmod(CELLS.index(cell), 3)
  return ((col + 0.5) / 3.0, (row + 0.5) / 3.0)


def inside(
    shape: str, x: np.ndarray, y: np.ndarray, half: np.ndarray | float
) -> np.ndarray:
  """Whether points at offsets (x, y) from a shape's centre lie inside it, for a
  bounding box of side 2 * half (all broadcast together)."""
  if shape == "circle":
    return x * x + y * y <= half * half
  if shape == "square":
    return (np.abs(x) <= half) & (np.abs(y) <= half)
  # Upward triangle: apex at the top centre, base along the bottom edge; its
  # half-width grows linearly from 0 at the apex to `half` at the base.
  depth = y + half
  return (depth >= 0) & (depth <= 2 * half) & (np.abs(x) <= depth / 2.0)


def object_mask(obj: ShapeObject, resolution: int) -> np.ndarray:
  """bool [R, R]: the pixels whose centres lie inside the object (no anti-aliasing)."""
  coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
  return inside(
      obj.shape,
      coords[None, :] - obj.center[0],
      coords[:, None] - obj.center[1],
      obj.side / 2.0,
  )


def render(objects: Sequence[ShapeObject], resolution: int) -> np.ndarray:
  """Draws objects on a black canvas.

  Args:
    objects: the scene.
    resolution: R, the canvas side in pixels.

  Returns:
    uint8 [R, R, 3].
  """
  image = np.zeros((resolution, resolution, 3), np.uint8)
  for obj in objects:
    image[object_mask(obj, resolution)] = obj.rgb
  return image


@dataclasses.dataclass(frozen=True)
class Grammar:
  """How one language captions a scene.

  Attributes:
    words: for each attribute (``colour``, ``shape``, ``size``, ``place``), the
      word of each value (``place`` is keyed by cell).
    template: one object's phrase, with ``{size}``, ``{colour}``, ``{shape}``
      and ``{place}`` fields.
    joiner: what joins a scene's phrases.
  """

  words: dict[str, dict[str, str]]
  template: str
  joiner: str

  def phrase(self, colour: str, shape: str, size: str, cell: str) -> str:
    return self.template.format(
        colour=self.words["colour"][colour],
        shape=self.words["shape"][shape],
        size=self.words["size"][size],
        place=self.words["place"][cell],
    )

  def pattern(self) -> re.Pattern:
    """A phrase's regular expression, a named group per field."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(self.template):
      parts.append(re.escape(literal))
      if field:
        words = sorted(self.words[field].values(), key=len, reverse=True)
        parts.append(f"(?P<{field}>{'|'.join(map(re.escape, words))})")
    return re.compile("".join(parts))


GRAMMARS: dict[str, Grammar] = {
    "en": Grammar(
        dict(
            colour={c: c for c in COLOURS},
            shape={s: s for s in SHAPES},
            size={s: s for s in SIZES},
            place=PLACES,
        ),
        "a {size} {colour} {shape} {place}",
        " and ",
    ),
    # "左边有一个红色的小圆形": place first, then colour, then size and shape,
    # as Chinese orders them; each character is three bytes to the tokenizer.
    "zh": Grammar(
        dict(
            colour=dict(
                red="红色",
                green="绿色",
                blue="蓝色",
                yellow="黄色",
                purple="紫色",
                cyan="青色",
                white="白色",
                orange="橙色",
            ),
            shape=dict(circle="圆形", square="正方形", triangle="三角形"),
            size=dict(small="小", large="大"),
            place={
                "top left": "左上角",
                "top": "上方",
                "top right": "右上角",
                "left": "左边",
                "center": "中间",
                "right": "右边",
                "bottom left": "左下角",
                "bottom": "下方",
                "bottom right": "右下角",
            },
        ),
        "{place}有一个{colour}的{size}{shape}",
        "，",
    ),
}
LANGUAGES: tuple[str, ...] = tuple(GRAMMARS)


def _grammar(language: str) -> Grammar:
  if language not in GRAMMARS:
    raise ValueError(
        f"unknown caption language {language!r}; expected one of {list(LANGUAGES)}"
    )
  return GRAMMARS[language]


def describe(obj: ShapeObject, language: str = "en") -> str:
  """The canonical phrase for one object (in English ``a {size} {colour}
  {shape} {place}``)."""
  return _grammar(language).phrase(obj.colour, obj.shape, obj.size, obj.cell)


def caption(objects: Sequence[ShapeObject], language: str = "en") -> str:
  """The canonical caption of a scene: its objects' phrases joined (in
  English by `` and ``)."""
  grammar = _grammar(language)
  return grammar.joiner.join(describe(o, language) for o in objects)


_PATTERNS = {language: g.pattern() for language, g in GRAMMARS.items()}
# Per language and field, the spec's name of each word (a cell for a place).
_OF_WORD = {
    language: {
        field: {word: name for name, word in names.items()}
        for field, names in g.words.items()
    }
    for language, g in GRAMMARS.items()
}


def caption_language(text: str) -> str:
  """``en`` for an ASCII caption, else ``zh``."""
  return "en" if text.isascii() else "zh"


def parse_caption(text: str) -> list[dict[str, str]]:
  """Parses a canonical caption, English or Chinese, into its objects' named
  attributes.

  Returns:
    One dict per object with keys ``colour``, ``shape``, ``size``, ``cell``
    (the English names of the spec tables, whatever the caption's language).

  Raises:
    ValueError: when ``text`` is not a canonical caption.
  """
  language = caption_language(text)
  grammar = GRAMMARS[language]
  objects = []
  for phrase in text.strip().split(grammar.joiner):
    match = _PATTERNS[language].fullmatch(phrase)
    if match is None:
      raise ValueError(
          f"not a canonical shapes caption: {text!r} (bad part: {phrase!r}); "
          f"expected {grammar.template!r} joined by {grammar.joiner!r}"
      )
    words = _OF_WORD[language]
    objects.append(
        dict(
            colour=words["colour"][match["colour"]],
            shape=words["shape"][match["shape"]],
            size=words["size"][match["size"]],
            cell=words["place"][match["place"]],
        )
    )
  return objects


def _bbox(obj: ShapeObject, resolution: int) -> np.ndarray:
  half = obj.side / 2.0
  cx, cy = obj.center
  return np.array([cx - half, cy - half, cx + half, cy + half]) * resolution


def _separated(a: ShapeObject, b: ShapeObject, resolution: int) -> bool:
  """Whether two bounding boxes are at least GAP_PIXELS apart along x or y."""
  ax0, ay0, ax1, ay1 = _bbox(a, resolution)
  bx0, by0, bx1, by1 = _bbox(b, resolution)
  gap_x = max(bx0 - ax1, ax0 - bx1)
  gap_y = max(by0 - ay1, ay0 - by1)
  return max(gap_x, gap_y) >= GAP_PIXELS


def _place(
    rng: np.random.Generator, colour: str, shape: str, size: str, cell: str
) -> ShapeObject:
  """Jitters an object's colour, size and position within the spec's ranges."""
  # One draw for all six jitters: rng calls dominate build time.
  u = rng.random(6)
  span = 2 * COLOUR_JITTER + 1
  rgb = tuple(
      min(255, max(0, base + int(u[i] * span) - COLOUR_JITTER))
      for i, base in enumerate(COLOURS[colour])
  )
  side = SIZES[size] * (1.0 + SIZE_JITTER * (2.0 * u[3] - 1.0))
  cx, cy = cell_center(cell)
  center = (
      cx + POSITION_JITTER * (2.0 * u[4] - 1.0),
      cy + POSITION_JITTER * (2.0 * u[5] - 1.0),
  )
  return ShapeObject(
      colour,
      shape,
      size,
      cell,
      rgb,
      (float(center[0]), float(center[1])),
      float(side),
  )


def sample_scene(
    rng: np.random.Generator,
    resolution: int,
    pairs: Sequence[tuple[str, str]] = TRAIN_PAIRS,
    first_pairs: Sequence[tuple[str, str]] | None = None,
    max_tries: int = 1000,
) -> list[ShapeObject]:
  """Draws a random scene of 1 or 2 non-overlapping objects.

  Args:
    rng: the only source of randomness.
    resolution: canvas side in pixels (the separation is checked in pixels).
    pairs: the (colour, shape) pairs objects are drawn from.
    first_pairs: if given, the first object's pair is drawn from these instead
      (the `heldout` split puts a held-out pair in every scene this way).
    max_tries: placements to try before giving up on a layout.
  """
  u = rng.random(2 + 3 * MAX_OBJECTS)
  num = 1 + int(u[0] * MAX_OBJECTS)
  # Distinct cells: the i-th object takes the int(u * (9 - i))-th cell still free.
  free = list(range(len(CELLS)))
  attrs = []
  for i in range(num):
    choices = first_pairs if (i == 0 and first_pairs) else pairs
    colour, shape = choices[int(u[1 + 3 * i] * len(choices))]
    size = tuple(SIZES)[int(u[2 + 3 * i] * len(SIZES))]
    cell = CELLS[free.pop(int(u[3 + 3 * i] * len(free)))]
    attrs.append((colour, shape, size, cell))
  return place_scene(rng, attrs, resolution, max_tries)


def place_scene(
    rng: np.random.Generator,
    attrs: Sequence[tuple[str, str, str, str]],
    resolution: int,
    max_tries: int = 1000,
) -> list[ShapeObject]:
  """The named objects ((colour, shape, size, cell) each) jittered as the
  dataset draws them, placed without overlap: one of the scenes a caption
  describes."""
  for _ in range(max_tries):
    objects = [_place(rng, *a) for a in attrs]
    if all(
        _separated(a, b, resolution)
        for i, a in enumerate(objects)
        for b in objects[i + 1 :]
    ):
      return objects
  raise RuntimeError(
      f"could not place {attrs} without overlap in {max_tries} tries"
  )


def objects_to_features(
    objects: Sequence[ShapeObject],
) -> dict[str, np.ndarray]:
  """A scene's structured fields as stored in the dataset: columns padded to MAX_OBJECTS.

  Labels are indices into COLOURS, SHAPES, SIZES and CELLS; padding is -1 (0 for
  the geometry).
  """
  pad = MAX_OBJECTS - len(objects)
  if pad < 0:
    raise ValueError(
        f"a scene holds at most {MAX_OBJECTS} objects, got {len(objects)}"
    )

  def labels(field, names):
    return np.array(
        [list(names).index(getattr(o, field)) for o in objects] + [-1] * pad,
        np.int32,
    )

  return {
      "colour": labels("colour", COLOURS),
      "shape": labels("shape", SHAPES),
      "size": labels("size", SIZES),
      "cell": labels("cell", CELLS),
      "rgb": np.array([o.rgb for o in objects] + [(0, 0, 0)] * pad, np.uint8),
      "center": np.array(
          [o.center for o in objects] + [(0, 0)] * pad, np.float32
      ),
      "side": np.array([o.side for o in objects] + [0] * pad, np.float32),
  }


def objects_from_features(
    features: dict[str, np.ndarray], num_objects: int
) -> list[dict[str, str]]:
  """Inverse of the label part of ``objects_to_features``: named attributes per object."""
  return [
      dict(
          colour=list(COLOURS)[features["colour"][i]],
          shape=SHAPES[features["shape"][i]],
          size=list(SIZES)[features["size"][i]],
          cell=CELLS[features["cell"][i]],
      )
      for i in range(int(num_objects))
  ]
