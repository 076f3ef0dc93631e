"""Image grids for sample sheets and dataset previews."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps float images in [-1, 1] to uint8 [0, 255] (uint8 input passes through)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(
      np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255
  ).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
  """Maps uint8 images to float32 in [-1, 1] (the models' image range)."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def make_grid(images: np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
  """Tiles images [N, H, W, 3] into one uint8 picture, ``columns`` wide, on grey."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  grid = np.full(
      (rows * (h + padding) + padding, columns * (w + padding) + padding, c),
      96,
      np.uint8,
  )
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top : top + h, left : left + w] = image
  return grid


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
  """[H, W, C] -> [scale * H, scale * W, C], each pixel a scale x scale block."""
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}")
  return np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)


def save_png(image: np.ndarray, path: str, scale: int = 1) -> str:
  """Writes uint8 [H, W, 3] as PNG, enlarged ``scale`` times (nearest), creating folders."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(enlarge(to_uint8(image), scale)).save(path)
  return path
