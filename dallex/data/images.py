"""Image helpers shared by the dataset builders and the input pipeline."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited onto white, the usual look of icons and
# cut-outs on the web; pure black would blend them into dark backgrounds.
_TRANSPARENT_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
  """Converts any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB.

  Alpha (including a palette's transparency) is composited onto white.
  """
  if image.mode == "RGB":
    return image
  if image.mode in ("RGBA", "LA", "PA") or (
      image.mode == "P" and "transparency" in image.info
  ):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _TRANSPARENT_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if image.mode.startswith("I;16") or image.mode in ("I", "F"):
    # 16- and 32-bit grayscale: rescale to 8 bits rather than clip.
    array = np.asarray(image, np.float64)
    span = max(array.max() - array.min(), 1e-12)
    array = (array - array.min()) / span * 255.0
    image = Image.fromarray(np.round(array).astype(np.uint8), "L")
  return image.convert("RGB")


def center_crop_resize(
    image: Image.Image | np.ndarray, resolution: int
) -> np.ndarray:
  """Centre-crops to a square and resizes to ``resolution``.

  Args:
    image: a PIL image in any mode, or uint8 [H, W, C] with C in {1, 3, 4}.
    resolution: R.

  Returns:
    uint8 [R, R, 3]; an array already that is returned as it is (the readers
    call this on every example, most of which are already fitted).
  """
  if isinstance(image, np.ndarray):
    if image.shape == (resolution, resolution, 3) and image.dtype == np.uint8:
      return image
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    image = Image.fromarray(image)
  image = to_rgb(image)
  width, height = image.size
  if width == height == resolution:
    return np.asarray(image, np.uint8)
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  # Lanczos when shrinking (alias-free), bicubic when enlarging.
  method = (
      Image.Resampling.LANCZOS
      if side > resolution
      else Image.Resampling.BICUBIC
  )
  return np.asarray(image.resize((resolution, resolution), method), np.uint8)


def load_image(path, resolution: int) -> np.ndarray:
  """Reads an image file fully (so truncation is caught here), fixes its EXIF
  orientation, and returns uint8 [R, R, 3].

  Raises:
    OSError / PIL.UnidentifiedImageError: for unreadable, corrupt or truncated files.
  """
  with Image.open(path) as image:
    image.load()
    image = ImageOps.exif_transpose(image)
    return center_crop_resize(image, resolution)
