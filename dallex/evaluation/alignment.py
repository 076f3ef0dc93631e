"""The shapes alignment checker: does an image show what its caption says?

Analytic, with no learned parts, so it cannot share a model's blind spots. It
reads an image the way the shapes spec (``dallex.data.shapes``) draws one:

1. foreground = pixels whose brightest channel is at least ``FOREGROUND``;
   8-connected components smaller than ``MIN_AREA`` x R^2 are noise;
2. each component is an object: its colour is the palette colour nearest its
   median RGB; its shape and side are those of the template (circle, square,
   triangle, drawn with the renderer's own ``shapes.inside``) with the highest
   IoU over a small grid of centres and sides around the component's bounding
   box; its size is small or large by that side (threshold halfway between
   the largest small and the smallest large side of the spec); its cell is
   where its bounding-box centre falls on the 3x3 grid; its measured centre
   (the centroid, pixels) and mean colour are kept for ``dallex.evaluation.diversity``;
3. intended objects are matched one-to-one to detected ones so that the most
   attributes agree; an intended object without a match is missing (every
   attribute wrong) and detected objects left over are extras.

    verdict = check(image, parse_caption("a small red circle on the left"))
    verdict.objects[0].right, verdict.extra

It is validated on the dataset's own test images before it judges generated
ones (``tests/test_alignment.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from dallex.data import shapes

ATTRIBUTES = ("colour", "shape", "size", "cell")
# The spec's darkest object channel is 168 (purple's blue, jittered); the
# background is 0. Halfway-ish keeps faint generator halos out of the objects.
FOREGROUND = 80
# Smallest object: a small triangle, about 0.016 R^2; specks below a third of it are noise.
MIN_AREA = 0.005
# Halfway between the largest small side and the smallest large one the spec draws.
_SIZE_THRESHOLD = (
    shapes.SIZES["small"] * (1 + shapes.SIZE_JITTER)
    + shapes.SIZES["large"] * (1 - shapes.SIZE_JITTER)
) / 2.0
_PALETTE = np.array(list(shapes.COLOURS.values()), np.float64)
_MAX_MATCHED = 6  # Blobs considered for matching (the largest); the rest are extras anyway.


@dataclasses.dataclass(frozen=True)
class Detected:
  """One object found in an image: named attributes, plus the evidence."""

  colour: str
  shape: str
  size: str
  cell: str
  area: int
  side: float  # Fitted template side, as a fraction of the canvas.
  iou: float  # Fitted template's IoU with the component.
  center: tuple[float, float]  # (x, y) of the component's centroid, in pixels.
  rgb: tuple[float, float, float]  # The component's mean colour.

  def attributes(self) -> dict[str, str]:
    return {a: getattr(self, a) for a in ATTRIBUTES}


@dataclasses.dataclass(frozen=True)
class ObjectVerdict:
  """Per intended object: which attributes the image got right."""

  colour: bool
  shape: bool
  size: bool
  cell: bool
  found: bool
  match: Detected | None = None  # The detected object it was matched to.

  @property
  def right(self) -> bool:
    return self.colour and self.shape and self.size and self.cell


@dataclasses.dataclass(frozen=True)
class Verdict:
  """An image against its intended objects."""

  objects: tuple[ObjectVerdict, ...]
  extra: int  # Detected objects matched to no intended one.
  detected: tuple[Detected, ...]

  @property
  def right(self) -> bool:
    """Every object right and nothing else drawn."""
    return self.extra == 0 and all(o.right for o in self.objects)

  @property
  def score(self) -> float:
    """Fraction of attributes right, minus one object's worth per extra (for ranking)."""
    n = max(1, len(self.objects))
    got = sum(getattr(o, a) for o in self.objects for a in ATTRIBUTES)
    return got / (len(ATTRIBUTES) * n) - self.extra / n


def _fit_template(
    component: np.ndarray, box: tuple[slice, slice], resolution: int
) -> tuple[str, float, float]:
  """(shape, side, iou): the spec template that best covers a component mask [R, R].

  Candidates are every shape at centres within half a pixel of the bounding
  box's and sides within 1.5 pixels of its larger extent, in quarter pixels.
  Several sides often fit a pixelated shape equally well; the middle one of
  those is the estimate.
  """
  rows, cols = box
  cx = (cols.start + cols.stop) / 2.0 / resolution
  cy = (rows.start + rows.stop) / 2.0 / resolution
  side = max(cols.stop - cols.start, rows.stop - rows.start) / resolution
  step = 0.25 / resolution
  offsets = np.arange(-2, 3) * step
  sides = side + np.arange(-6, 7) * step
  dx, dy, s = (
      a.ravel() for a in np.meshgrid(offsets, offsets, sides, indexing="ij")
  )
  # Only a window around the component can differ between templates and component.
  r0, r1 = max(0, rows.start - 2), min(resolution, rows.stop + 2)
  c0, c1 = max(0, cols.start - 2), min(resolution, cols.stop + 2)
  window = component[r0:r1, c0:c1]
  x = ((np.arange(c0, c1) + 0.5) / resolution)[None, None, :] - (cx + dx)[
      :, None, None
  ]
  y = ((np.arange(r0, r1) + 0.5) / resolution)[None, :, None] - (cy + dy)[
      :, None, None
  ]
  half = (s / 2.0)[:, None, None]
  best = ("", 0.0, -1.0)
  for name in shapes.SHAPES:
    t = shapes.inside(name, x, y, half)
    iou = np.sum(t & window, axis=(1, 2)) / np.maximum(
        np.sum(t | window, axis=(1, 2)), 1
    )
    top = float(iou.max())
    if top > best[2] + 1e-9:
      best = (name, float(np.median(s[iou >= top - 1e-9])), top)
  return best


def detect(image: np.ndarray) -> list[Detected]:
  """The objects in a uint8 image [R, R, 3], largest first."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
    raise ValueError(f"image must be [R, R, 3], got {image.shape}")
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got {image.dtype}")
  resolution = image.shape[0]
  foreground = image.max(axis=-1) >= FOREGROUND
  labels, _ = scipy.ndimage.label(foreground, structure=np.ones((3, 3), bool))
  found = []
  for index, box in enumerate(scipy.ndimage.find_objects(labels), start=1):
    component = labels == index
    area = int(component.sum())
    if area < MIN_AREA * resolution * resolution:
      continue
    rgb = np.median(image[component].astype(np.float64), axis=0)
    colour = list(shapes.COLOURS)[
        int(np.argmin(np.sum((_PALETTE - rgb) ** 2, axis=1)))
    ]
    shape, side, iou = _fit_template(component, box, resolution)
    size = "small" if side < _SIZE_THRESHOLD else "large"
    rows, cols = box
    col = min(2, int((cols.start + cols.stop) / 2.0 / resolution * 3))
    row = min(2, int((rows.start + rows.stop) / 2.0 / resolution * 3))
    ys, xs = np.nonzero(component)
    found.append(
        Detected(
            colour,
            shape,
            size,
            shapes.CELLS[3 * row + col],
            area,
            side,
            iou,
            (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
            tuple(float(v) for v in image[component].mean(axis=0)),
        )
    )
  return sorted(found, key=lambda d: -d.area)


def _agreement(
    intended: dict[str, str], detected: Detected
) -> tuple[bool, ...]:
  return tuple(intended[a] == getattr(detected, a) for a in ATTRIBUTES)


def check(image: np.ndarray, intended: Sequence[dict[str, str]]) -> Verdict:
  """Judges one image against its intended objects.

  Args:
    image: uint8 [R, R, 3].
    intended: one dict per object with keys colour, shape, size and cell (as
      ``shapes.parse_caption`` or ``shapes.objects_from_features`` give).
  """
  for obj in intended:
    missing = [a for a in ATTRIBUTES if a not in obj]
    if missing:
      raise ValueError(f"intended object {obj!r} lacks {missing}")
  detected = detect(image)
  candidates = detected[:_MAX_MATCHED]
  slots = list(range(len(candidates))) + [None] * len(intended)
  best, best_score = None, -1
  for assignment in itertools.permutations(slots, len(intended)):
    score = sum(
        sum(_agreement(o, candidates[j]))
        for o, j in zip(intended, assignment)
        if j is not None
    )
    if score > best_score:
      best, best_score = assignment, score
  verdicts = []
  for obj, j in zip(intended, best or ()):
    if j is None:
      verdicts.append(ObjectVerdict(False, False, False, False, found=False))
    else:
      verdicts.append(
          ObjectVerdict(
              *_agreement(obj, candidates[j]), found=True, match=candidates[j]
          )
      )
  matched = sum(j is not None for j in (best or ()))
  return Verdict(tuple(verdicts), len(detected) - matched, tuple(detected))


def summarize(verdicts: Sequence[Verdict]) -> dict[str, float]:
  """Accuracies over a set of judged images.

  Keys: ``{colour,shape,size,cell}_accuracy`` and ``object_accuracy`` (all
  four right) over all intended objects; ``one_object_accuracy`` (objects of
  1-object captions), ``two_object_accuracy`` (objects of 2-object captions)
  and ``two_object_image_accuracy`` (2-object captions with both objects
  right); ``{one,two}_object_{colour,shape,size,cell}_accuracy`` (each
  attribute over the objects of 1- and of 2-object captions, to show which
  one a scene of two loses); ``no_extra_rate`` and ``image_accuracy`` (all right and
  nothing extra) over images; the counts they are over.
  """
  objects = [o for v in verdicts for o in v.objects]
  one = [o for v in verdicts if len(v.objects) == 1 for o in v.objects]
  two = [v for v in verdicts if len(v.objects) == 2]
  mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")
  two_objects = [o for v in two for o in v.objects]
  out = {
      f"{a}_accuracy": mean([getattr(o, a) for o in objects])
      for a in ATTRIBUTES
  }
  for name, group in (("one", one), ("two", two_objects)):
    out.update(
        {
            f"{name}_object_{a}_accuracy": mean([getattr(o, a) for o in group])
            for a in ATTRIBUTES
        }
    )
  out.update(
      object_accuracy=mean([o.right for o in objects]),
      one_object_accuracy=mean([o.right for o in one]),
      two_object_accuracy=mean([o.right for o in two_objects]),
      two_object_image_accuracy=mean(
          [all(o.right for o in v.objects) for v in two]
      ),
      no_extra_rate=mean([v.extra == 0 for v in verdicts]),
      image_accuracy=mean([v.right for v in verdicts]),
      num_images=len(verdicts),
      num_objects=len(objects),
      num_one_object=len(one),
      num_two_object=len(two),
  )
  return out
