"""R-precision: can the model's own contrastive embeddings pick an image's caption?

For each generated image, its true caption is ranked among ``num_distractors``
other captions by cosine similarity of the discriminator's image and text
embeddings (the contrastive "encoder loss" heads); R-precision (R = 1, as in
AttnGAN) is the fraction ranked first. The judge is the model's own
discriminator, trained with the generator: it measures whether the generator
satisfies its own critic, not an independent notion of alignment, so read it
beside the shapes checker and FID, never alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def r_precision(
    image_emb: np.ndarray,
    caption_ids: Sequence[int],
    text_emb: np.ndarray,
    num_distractors: int = 99,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
  """Fraction of images whose own caption outranks ``num_distractors`` others.

  Args:
    image_emb: [N, E] unit-norm embeddings of generated images.
    caption_ids: [N] index into ``text_emb`` of each image's caption.
    text_emb: [M, E] unit-norm embeddings of the distinct captions of the pool
      (distractors are drawn from it, never equal to the true caption).
    num_distractors: how many other captions each image is ranked against.
    seed: draws the distractors.

  Returns:
    (R-precision, per-image margin [N]: true similarity minus the best distractor's).
  """
  image_emb = np.asarray(image_emb, np.float64)
  text_emb = np.asarray(text_emb, np.float64)
  caption_ids = np.asarray(caption_ids)
  m = len(text_emb)
  if m < 2:
    raise ValueError("R-precision needs at least 2 distinct captions")
  k = min(num_distractors, m - 1)
  rng = np.random.default_rng(seed)
  margins = np.empty(len(image_emb))
  for i, (emb, true) in enumerate(zip(image_emb, caption_ids)):
    others = rng.choice(m - 1, k, replace=False)
    others += others >= true  # Skip the true caption.
    sims = text_emb[others] @ emb
    margins[i] = text_emb[true] @ emb - sims.max()
  return float(np.mean(margins > 0)), margins
