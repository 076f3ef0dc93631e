"""How much the images of one caption vary, against the dataset's own variation.

For each caption, K images: K noise seeds of a model, or K scenes the shapes
spec draws for it (``real_renders``: the dataset's jitter of position, size
and colour). The checker (``dallex.evaluation.alignment``) finds each of the
caption's objects in each image; over the images that show it, the standard
deviation of its centre (pixels, x and y averaged), its side (pixels) and its
mean colour (RGB averaged) is taken, then averaged over objects and captions.

    generated = spread(images, intended)          # images: [C, K, R, R, 3]
    real = spread(real_renders(intended, K, R, rng), intended)
    ratios = {k: generated[k] / real[k] for k in SPREADS}

A ratio near 1 says the model varies a caption's scene as much as the data
does; near 0, that its noise seeds draw nearly the same image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dallex.data import shapes
from dallex.evaluation import alignment

SPREADS = ("centre", "size", "colour")


def spread(
    images: np.ndarray, intended: Sequence[Sequence[dict[str, str]]]
) -> dict[str, float]:
  """Within-caption standard deviations, and how many objects they are over.

  Args:
    images: uint8 [C, K, R, R, 3], K images of each of C captions.
    intended: [C] each caption's objects (as ``shapes.parse_caption`` gives).

  Returns:
    ``centre``, ``size``, ``colour`` (pixels; colour in 0-255 units) and
    ``num_objects``, the caption objects found in at least two images.
  """
  images = np.asarray(images)
  if images.ndim != 5 or len(images) != len(intended):
    raise ValueError(
        f"images must be [C, K, R, R, 3] with C = {len(intended)} captions, "
        f"got {images.shape}"
    )
  resolution = images.shape[2]
  stds = {k: [] for k in SPREADS}
  for caption_images, objects in zip(images, intended):
    found = [[] for _ in objects]
    for image in caption_images:
      for k, verdict in enumerate(alignment.check(image, objects).objects):
        if verdict.match is not None:
          found[k].append(verdict.match)
    for matches in found:
      if len(matches) < 2:
        continue
      centres = np.array([m.center for m in matches])
      stds["centre"].append(float(centres.std(axis=0).mean()))
      stds["size"].append(float(np.std([m.side * resolution for m in matches])))
      stds["colour"].append(
          float(np.array([m.rgb for m in matches]).std(0).mean())
      )
  out = {k: float(np.mean(v)) if v else float("nan") for k, v in stds.items()}
  out["num_objects"] = len(stds["centre"])
  return out


def real_renders(
    intended: Sequence[Sequence[dict[str, str]]],
    k: int,
    resolution: int,
    rng: np.random.Generator,
) -> np.ndarray:
  """uint8 [C, K, R, R, 3]: K scenes the shapes spec draws for each caption."""

  def scene(objects):
    attrs = [tuple(o[a] for a in alignment.ATTRIBUTES) for o in objects]
    return shapes.render(shapes.place_scene(rng, attrs, resolution), resolution)

  return np.stack(
      [np.stack([scene(objects) for _ in range(k)]) for objects in intended]
  )


def ratios(
    generated: dict[str, float], real: dict[str, float]
) -> dict[str, float]:
  """``{spread}_ratio``: generated / real for each of ``SPREADS``."""
  return {f"{k}_ratio": generated[k] / real[k] for k in SPREADS}
