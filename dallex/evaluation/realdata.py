"""Metrics of generated images against the real ones, with no downloaded weights
and no part of the model judging its own images.

    retrieval(generated, captions, real, real_captions)  # top-1 / top-5 and chance
    label_report(generated, labels, real, real_labels)   # group classifier

Retrieval uses a fixed, plain embedding: each image averaged over square
blocks down to 16 x 16 pixels (a blur that keeps colour and layout, drops
fine texture), RGB in [0, 1], flattened to 768 numbers; nearest means least
Euclidean distance in it. The classifier is a multinomial logistic regression
trained on the real images only, reading that embedding, a 64-bin colour
histogram and 4 x 4 cells of gradient-orientation histograms (8 bins); each
label is weighted by its inverse frequency, so its balanced accuracy (mean
recall over labels) has chance 1 / number of labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import optimize, special

EMBED_SIDE = 16


def _area_weights(side: int) -> np.ndarray:
  """[16, side]: the share of each of ``side`` pixels in each of 16 cells."""
  edges = np.arange(EMBED_SIDE + 1) * side / EMBED_SIDE
  pixels = np.arange(side)
  overlap = np.minimum(edges[1:, None], pixels[None] + 1) - np.maximum(
      edges[:-1, None], pixels[None]
  )
  return np.clip(overlap, 0, None) * EMBED_SIDE / side


def embed(images: np.ndarray) -> np.ndarray:
  """uint8 [N, R, R, 3] -> float32 [N, 768]: area means over 16 x 16 cells
  (block means when 16 divides R), in [0, 1]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(f"images must be [N, R, R, C], got {images.shape}")
  a = _area_weights(images.shape[1]).astype(np.float32)
  cells = np.einsum("jy,nyxc,kx->njkc", a, images.astype(np.float32), a)
  return (cells / 255.0).reshape(len(images), -1)


def _colour_histogram(images: np.ndarray, levels: int = 4) -> np.ndarray:
  q = (images // (256 // levels)).reshape(len(images), -1, 3).astype(np.int64)
  index = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
  counts = np.stack([np.bincount(i, minlength=levels**3) for i in index])
  return (counts / index.shape[1]).astype(np.float32)


def _gradient_histograms(
    images: np.ndarray, cells: int = 4, bins: int = 8
) -> np.ndarray:
  grey = images.astype(np.float32).mean(-1) / 255.0
  gx, gy = np.zeros_like(grey), np.zeros_like(grey)
  gx[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
  gy[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
  magnitude = np.hypot(gx, gy)
  # Orientation without sign: an edge and its reverse fall in one bin.
  which = np.minimum(
      ((np.arctan2(gy, gx) % np.pi) / np.pi * bins).astype(int), bins - 1
  )
  n, r = grey.shape[:2]
  c = r // cells
  magnitude, which = (
      magnitude[:, : c * cells, : c * cells],
      which[:, : c * cells, : c * cells],
  )
  out = np.stack(
      [
          (magnitude * (which == b))
          .reshape(n, cells, c, cells, c)
          .sum(axis=(2, 4))
          for b in range(bins)
      ],
      axis=-1,
  ).reshape(n, -1)
  return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-6)


def classifier_features(images: np.ndarray) -> np.ndarray:
  """uint8 [N, R, R, 3] -> float32 [N, 960]: ``embed``, the colour histogram
  (4 levels a channel) and the gradient-orientation histograms."""
  return np.concatenate(
      [embed(images), _colour_histogram(images), _gradient_histograms(images)],
      axis=1,
  )


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a, b = a.astype(np.float64), b.astype(np.float64)
  return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]


def retrieval(
    generated: np.ndarray,
    captions: Sequence[str],
    real: np.ndarray,
    real_captions: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
  """How often a generated image's nearest real images (in ``embed``) include
  the one its caption names.

  Args:
    generated: uint8 [N, R, R, 3] images generated from ``captions``.
    captions: [N] the caption of each generated image.
    real: uint8 [M, R, R, 3] the real images (the gallery).
    real_captions: [M] each real image's caption; every generated caption
      must be among them. Real images sharing a caption all count as right.

  Returns:
    ``retrieval_top{k}``: the fraction of generated images with a right real
    image among their k nearest, and ``retrieval_top{k}_chance``: the same for
    k real images drawn at random.
  """
  if len(generated) != len(captions) or len(real) != len(real_captions):
    raise ValueError(
        f"{len(generated)} generated images for {len(captions)} captions, "
        f"{len(real)} real for {len(real_captions)}"
    )
  owners: dict[str, list[int]] = {}
  for j, c in enumerate(real_captions):
    owners.setdefault(c, []).append(j)
  missing = [c for c in captions if c not in owners]
  if missing:
    raise ValueError(
        f"{len(missing)} generated captions name no real image, e.g. {missing[0]!r}"
    )
  m = len(real)
  distances = _squared_distances(embed(generated), embed(real))
  # Stable order: an exact tie goes to the lower real index, as in a sort.
  order = np.argsort(distances, axis=1, kind="stable")[:, : max(ks)]
  right = np.zeros((len(generated), m), bool)
  for i, c in enumerate(captions):
    right[i, owners[c]] = True
  hits = np.take_along_axis(right, order, axis=1)
  sizes = np.array([len(owners[c]) for c in captions])
  out = {}
  for k in ks:
    k = min(k, m)
    out[f"retrieval_top{k}"] = float(hits[:, :k].any(axis=1).mean())
    # P(k draws without replacement from m miss all s right ones)
    # = C(m - s, k) / C(m, k); zero when fewer than k are wrong.
    left = m - sizes - k
    miss = np.exp(
        special.gammaln(m - sizes + 1)
        + special.gammaln(m - k + 1)
        - special.gammaln(np.maximum(left, 0) + 1)
        - special.gammaln(m + 1)
    )
    miss = np.where(left < 0, 0.0, miss)
    out[f"retrieval_top{k}_chance"] = float(np.mean(1 - miss))
  return out


@dataclasses.dataclass(frozen=True)
class LabelClassifier:
  """Multinomial logistic regression on standardised embeddings.

  Attributes:
    labels: [C] the label names, in the order of the weights' columns.
    mean, scale: [D] the standardisation of the training embeddings.
    weights: [D + 1, C] (the last row is the bias).
  """

  labels: tuple[str, ...]
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray

  @classmethod
  def fit(
      cls,
      features: np.ndarray,
      labels: Sequence[str],
      l2: float = 1e-2,
      max_iter: int = 300,
  ) -> LabelClassifier:
    """Fits on ``features`` [N, D] with ``labels`` [N] (at least two distinct),
    each label's examples weighted by 1 / its count; ``l2`` scales the weight
    penalty (per example)."""
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
      raise ValueError(f"a classifier needs two labels or more, got {names}")
    y = np.array([names.index(x) for x in labels])
    counts = np.bincount(y, minlength=len(names))
    sample_weight = (len(y) / (len(names) * counts))[y]
    mean = features.mean(0)
    scale = features.std(0) + 1e-6
    x = np.concatenate(
        [(features - mean) / scale, np.ones((len(features), 1))], axis=1
    ).astype(np.float64)
    onehot = np.eye(len(names))[y]
    shape = (x.shape[1], len(names))

    def loss_and_grad(flat):
      w = flat.reshape(shape)
      logits = x @ w
      logp = logits - special.logsumexp(logits, axis=1, keepdims=True)
      loss = -(sample_weight * (onehot * logp).sum(1)).mean()
      loss += 0.5 * l2 * (w[:-1] ** 2).sum()
      grad = x.T @ ((np.exp(logp) - onehot) * sample_weight[:, None]) / len(x)
      grad[:-1] += l2 * w[:-1]
      return loss, grad.ravel()

    result = optimize.minimize(
        loss_and_grad,
        np.zeros(np.prod(shape)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter},
    )
    return cls(names, mean, scale, result.x.reshape(shape))

  def predict(self, features: np.ndarray) -> list[str]:
    """[N, D] -> [N] label names."""
    x = (features - self.mean) / self.scale
    logits = x @ self.weights[:-1] + self.weights[-1]
    return [self.labels[i] for i in logits.argmax(1)]

  def balanced_accuracy(
      self, features: np.ndarray, labels: Sequence[str]
  ) -> float:
    """Mean over the labels present of the fraction of their examples predicted
    right (chance: 1 / number of labels the classifier knows)."""
    return balanced_accuracy(self.predict(features), labels)


def balanced_accuracy(predicted: Sequence[str], labels: Sequence[str]) -> float:
  """Mean over the distinct ``labels`` of the recall of each."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  return float(
      np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)])
  )


def cross_validated_accuracy(
    features: np.ndarray, labels: Sequence[str], folds: int = 5, seed: int = 0
) -> float:
  """Balanced accuracy of the classifier on real images it was not fit on:
  the ceiling a generator's images can be read at."""
  labels = np.asarray(labels)
  fold = np.random.default_rng(seed).permutation(len(labels)) % folds
  predicted = np.empty(len(labels), dtype=object)
  for f in range(folds):
    classifier = LabelClassifier.fit(features[fold != f], labels[fold != f])
    predicted[fold == f] = classifier.predict(features[fold == f])
  return balanced_accuracy(list(predicted), labels)


def label_report(
    generated: np.ndarray,
    labels: Sequence[str],
    real: np.ndarray,
    real_labels: Sequence[str],
    min_count: int = 20,
) -> dict[str, float]:
  """The classifier fit on the real images, reading the generated ones.

  Args:
    generated: uint8 [N, R, R, 3]; labels: [N] what each should show.
    real: uint8 [M, R, R, 3]; real_labels: [M].
    min_count: labels with fewer real images are left out on both sides, as
      are images labelled "".

  Returns:
    ``classifier_generated`` (its balanced accuracy on the generated images),
    ``classifier_fit`` (on the real images it was fit on: what exact copies
    of them score, when the generated images stand for those),
    ``classifier_real`` (5-fold cross-validated on the real ones: how it
    reads real images it was not fit on), ``classifier_chance`` (1 / number
    of labels) and ``classifier_labels`` (the number of labels; alone when
    under two).
  """
  real_labels, labels = np.asarray(real_labels), np.asarray(labels)
  names, counts = np.unique(real_labels[real_labels != ""], return_counts=True)
  kept = set(names[counts >= min_count])
  if len(kept) < 2:
    return {"classifier_labels": len(kept)}  # nothing to tell apart
  real_keep = np.isin(real_labels, list(kept))
  keep = np.isin(labels, list(kept))
  real_x = classifier_features(real[real_keep])
  classifier = LabelClassifier.fit(real_x, real_labels[real_keep])
  return {
      "classifier_generated": classifier.balanced_accuracy(
          classifier_features(generated[keep]), labels[keep]
      ),
      "classifier_fit": classifier.balanced_accuracy(
          real_x, real_labels[real_keep]
      ),
      "classifier_real": cross_validated_accuracy(
          real_x, real_labels[real_keep]
      ),
      "classifier_chance": 1.0 / len(kept),
      "classifier_labels": len(kept),
  }
