"""One evaluation of a generator on a dataset split: every metric, and the worst samples.

    eval_set = load_eval_set(config.data, "test", num=2000)
    result = evaluate(sampler, eval_set, seed=0, inception=feature_fn)
    result.metrics        # {"object_accuracy": ..., "r_precision": ..., "fid": ...}
    worst_samples_png(result, "worst.png")

Metrics: the shapes alignment checker's accuracies (``dallex_shapes`` only);
on other data, nearest-real-image retrieval and, when the examples carry
labels, a classifier of the real images reading the generated ones
(``realdata``); R-precision from the model's own contrastive heads (when it
has them: the model judging itself); FID and KID when an Inception feature
function is given. Generated image i uses
caption i of the split and noise index i under ``seed``, so two evaluations
of one checkpoint with one seed see the same images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import textwrap
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from dallex.data import shapes, shapes_builder, sources
from dallex.data.images import center_crop_resize
from dallex.evaluation import alignment, diversity, fid, realdata, rprecision
from dallex.sampling import pad_rows

FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """The first ``num`` examples of a split: captions, intended objects, real images.

  Attributes:
    name: ``{dataset}/{split}`` (keys the FID reference cache).
    captions: [N] one caption per example (its first).
    intended: [N] each example's objects (``dallex_shapes`` only), else None.
    images: uint8 [N, R, R, 3] real images at the config's resolution.
    labels: [N] each example's label (a caption folder's ``label``; "" for
      none), None when the dataset has no labels.
  """

  name: str
  captions: list[str]
  intended: list[list[dict[str, str]]] | None
  images: np.ndarray
  labels: list[str] | None = None


def load_eval_set(data_config, split: str, num: int) -> EvalSet:
  """Reads the first ``num`` examples of ``split`` (all of them if fewer)."""
  if num < 1:
    raise ValueError(f"num must be >= 1, got {num}")
  source = sources.open_source(data_config, split)
  n = min(num, len(source.data))
  captions, intended, images, labels = [], [], [], []
  res = data_config.resolution
  for i in range(n):
    example = source.data[i]
    image, texts = source.extract(example)
    images.append(center_crop_resize(image, res))
    captions.append(texts[0])
    if "label" in example:
      label = example["label"]
      labels.append(label.decode() if isinstance(label, bytes) else str(label))
    if data_config.name == "dallex_shapes":
      intended.append(
          shapes.objects_from_features(
              example["objects"], example["num_objects"]
          )
      )
  name = f"{data_config.name}_r{res}"
  if data_config.name == "dallex_shapes":
    name = "dallex_shapes_" + shapes_builder.config_name(
        res, data_config.language
    )
  return EvalSet(
      f"{name}/{split}",
      captions,
      intended if data_config.name == "dallex_shapes" else None,
      np.stack(images) if images else np.zeros((0, res, res, 3), np.uint8),
      labels if any(labels) else None,
  )


def language_variants(
    data_config, languages: Sequence[str] | None = None
) -> list[tuple[str, object]]:
  """The data configs to evaluate a run on, one per caption language:
  ``[(suffix, data_config)]``, the suffix (``/en``, ``/zh``) naming each in
  the report when there are several.

  Args:
    data_config: the run's ``config.data``.
    languages: ``dallex_shapes`` caption languages (``en``, ``zh``,
      ``mixed``); None: the run's own, both ``en`` and ``zh`` for a run
      trained on mixed captions (the same scenes captioned in each).
  """
  if data_config.name != "dallex_shapes":
    if languages:
      raise ValueError(
          f"caption languages {list(languages)} apply to dallex_shapes runs "
          f"only; this run trained on {data_config.name}"
      )
    return [("", data_config)]
  if not languages:
    own = data_config.language
    languages = list(shapes.LANGUAGES) if own == "mixed" else [own]
  variants = []
  for language in languages:
    # Raises, naming the language, when no build has it.
    shapes_builder.config_name(data_config.resolution, language)
    variant = data_config.copy_and_resolve_references()
    variant.language = language
    variants.append((f"/{language}" if len(languages) > 1 else "", variant))
  return variants


@dataclasses.dataclass
class Evaluation:
  """metrics: name -> number; images: uint8 [N, R, R, 3] generated; captions [N];
  scores [N] (higher is better: checker score, else R-precision margin) and
  notes [N] (what the checker found wrong) for picking and labelling the worst.
  """

  metrics: dict[str, float]
  images: np.ndarray
  captions: list[str]
  scores: np.ndarray | None
  notes: list[str]


def _verdict_note(verdict: alignment.Verdict) -> str:
  wrong = []
  for i, o in enumerate(verdict.objects):
    if not o.found:
      wrong.append(f"#{i + 1} missing")
    elif not o.right:
      wrong.append(
          f"#{i + 1} "
          + ",".join(a for a in alignment.ATTRIBUTES if not getattr(o, a))
      )
  if verdict.extra:
    wrong.append(f"{verdict.extra} extra")
  return "; ".join(wrong) or "right"


def reference_stats(
    eval_set: EvalSet,
    inception: FeatureFn,
    cache_dir: str | None,
    weights_id: str,
    batch_size: int = 50,
) -> tuple[fid.FeatureStats, np.ndarray]:
  """Inception statistics and features of the real images, cached per split and weights."""
  path = None
  if cache_dir:
    key = hashlib.sha1(
        f"{eval_set.name}|{len(eval_set.images)}|{weights_id}".encode()
    ).hexdigest()
    path = os.path.join(
        cache_dir, f"{eval_set.name.replace('/', '_')}_{key[:12]}.npz"
    )
    if os.path.exists(path):
      with np.load(path) as f:
        features = f["features"]
      return fid.FeatureStats.from_features(features), features
  features = inception_features(
      inception, eval_set.images, batch_size, "real features"
  )
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    # Written whole, then renamed: a crash leaves no half file.
    tmp = path + ".tmp.npz"
    np.savez(tmp, features=features)
    os.replace(tmp, path)
  return fid.FeatureStats.from_features(features), features


def inception_features(
    inception: FeatureFn,
    images: np.ndarray,
    batch_size: int = 50,
    desc: str = "features",
) -> np.ndarray:
  """float64 [N, 2048] in batches of one shape (the last is padded), with a progress bar."""
  out = []
  for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
    batch = images[start : start + batch_size]
    out.append(
        np.asarray(inception(pad_rows(batch, batch_size)), np.float64)[
            : len(batch)
        ]
    )
  return np.concatenate(out)


def evaluate(
    sampler,
    eval_set: EvalSet,
    seed: int = 0,
    *,
    inception: FeatureFn | None = None,
    inception_id: str = "",
    fid_cache: str | None = None,
    batch_size: int = 64,
    num_distractors: int = 99,
) -> Evaluation:
  """Generates one image per caption of ``eval_set`` and measures it.

  Args:
    sampler: a ``dallex.sampling.Sampler`` (with its discriminator for R-precision).
    eval_set: what to generate and compare against.
    seed: the noise seed.
    inception: images -> pool3 features; FID and KID are computed when given.
    inception_id: names the weights in the reference-statistics cache key.
    fid_cache: folder for cached reference features (None: no cache).
  """
  images = sampler.generate(eval_set.captions, seed=seed, batch_size=batch_size)
  metrics: dict[str, float] = {"num_images": len(images)}
  scores, notes = None, [""] * len(images)
  if eval_set.intended is not None:
    verdicts = [
        alignment.check(im, objs) for im, objs in zip(images, eval_set.intended)
    ]
    metrics.update(alignment.summarize(verdicts))
    scores = np.array([v.score for v in verdicts])
    notes = [_verdict_note(v) for v in verdicts]
  else:
    metrics.update(
        realdata.retrieval(
            images, eval_set.captions, eval_set.images, eval_set.captions
        )
    )
    if eval_set.labels is not None:
      metrics.update(
          realdata.label_report(
              images, eval_set.labels, eval_set.images, eval_set.labels
          )
      )
  if sampler.d_params is not None and sampler.config.model.arch != "seed":
    distinct = sorted(set(eval_set.captions))
    if len(distinct) >= 2:
      index = {c: i for i, c in enumerate(distinct)}
      img_emb, txt_emb = sampler.embed(images, distinct, batch_size)
      value, margins = rprecision.r_precision(
          img_emb,
          [index[c] for c in eval_set.captions],
          txt_emb,
          num_distractors,
          seed,
      )
      metrics["r_precision"] = value
      metrics["r_precision_distractors"] = min(
          num_distractors, len(distinct) - 1
      )
      if scores is None:
        scores = margins
  if inception is not None:
    real_stats, real_features = reference_stats(
        eval_set, inception, fid_cache, inception_id
    )
    fake_features = inception_features(
        inception, images, desc="generated features"
    )
    metrics["fid"] = fid.frechet_distance(
        real_stats, fid.FeatureStats.from_features(fake_features)
    )
    metrics["kid"], metrics["kid_std"] = fid.kernel_inception_distance(
        real_features, fake_features
    )
  return Evaluation(metrics, images, list(eval_set.captions), scores, notes)


def diversity_report(
    sampler,
    eval_set: EvalSet,
    num_captions: int = 100,
    k: int = 16,
    seed: int = 0,
) -> dict[str, float]:
  """``dallex.evaluation.diversity`` on the first ``num_captions`` captions of
  a shapes split: K noise seeds each against K scenes the spec draws for them.

  Returns ``{centre,size,colour}_ratio`` (generated / real) and both sides'
  spreads as ``generated_*`` and ``real_*``.
  """
  if eval_set.intended is None:
    raise ValueError(f"{eval_set.name}: diversity needs the shapes checker")
  captions = eval_set.captions[:num_captions]
  intended = eval_set.intended[:num_captions]
  resolution = eval_set.images.shape[1]
  generated = sampler.generate(captions, seed=seed, num_per_prompt=k).reshape(
      len(captions), k, resolution, resolution, 3
  )
  real = diversity.real_renders(
      intended, k, resolution, np.random.default_rng(seed)
  )
  spreads = {
      "generated": diversity.spread(generated, intended),
      "real": diversity.spread(real, intended),
  }
  out = diversity.ratios(spreads["generated"], spreads["real"])
  for side, values in spreads.items():
    out.update({f"{side}_{name}": v for name, v in values.items()})
  return out


def _sheet(
    items: Sequence[tuple[Sequence[np.ndarray], str, str]],
    path: str,
    scale: int,
    columns: int,
    caption_lines: int,
    note_line: bool,
) -> str:
  """A PNG of tiles: each item's images side by side, above its caption
  (wrapped, up to ``caption_lines`` lines) and, with ``note_line``, its note
  when not empty (in orange, after '->')."""
  res = items[0][0][0].shape[0] * scale
  width = max(len(items[0][0]) * (res + 4) - 4, 160)
  line_height, lines = 11, caption_lines + note_line
  tile_h = res + line_height * lines + 4
  rows = -(-len(items) // columns)
  sheet = Image.new(
      "RGB", (columns * (width + 4) + 4, rows * (tile_h + 4) + 4), (40, 40, 40)
  )
  draw = ImageDraw.Draw(sheet)
  for k, (images, caption, note) in enumerate(items):
    r, c = divmod(k, columns)
    left, top = 4 + c * (width + 4), 4 + r * (tile_h + 4)
    for j, image in enumerate(images):
      tile = Image.fromarray(image).resize((res, res), Image.Resampling.NEAREST)
      sheet.paste(tile, (left + j * (res + 4), top))
    text = textwrap.wrap(caption, width // 6)[:caption_lines]
    for j, line in enumerate(text + ([f"-> {note}"] if note else [])):
      draw.text(
          (left, top + res + 2 + j * line_height),
          line,
          fill=(255, 200, 120) if line.startswith("->") else (230, 230, 230),
      )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sheet.save(path)
  return path


def worst_samples_png(
    result: Evaluation,
    path: str,
    num: int = 16,
    scale: int = 4,
    columns: int = 4,
) -> str | None:
  """A PNG of the ``num`` lowest-scored samples, each with its caption and what was wrong."""
  if result.scores is None or not len(result.images):
    return None
  worst = np.argsort(result.scores, kind="stable")[:num]
  items = [
      ([result.images[i]], result.captions[i], result.notes[i]) for i in worst
  ]
  return _sheet(items, path, scale, columns, caption_lines=5, note_line=True)


def pairs_png(
    result: Evaluation,
    eval_set: EvalSet,
    path: str,
    num: int = 16,
    scale: int = 3,
    columns: int = 4,
) -> str:
  """A PNG of ``num`` captions spread evenly over the set, each with its real
  image (left) and the generated one (right) above the caption."""
  spread = np.linspace(0, len(result.images) - 1, min(num, len(result.images)))
  items = [
      ([eval_set.images[i], result.images[i]], result.captions[i], "")
      for i in np.unique(spread.astype(int))
  ]
  return _sheet(items, path, scale, columns, caption_lines=3, note_line=False)


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Metrics as a text table: one row per metric, one column per split."""
  names = []
  for metrics in results.values():
    names += [k for k in metrics if k not in names]
  splits = list(results)
  width = max(len(n) for n in names) if names else 10
  lines = [" " * width + "".join(f"{s:>12}" for s in splits)]
  for name in names:
    cells = []
    for s in splits:
      v = results[s].get(name)
      cells.append(
          f"{'-':>12}"
          if v is None
          else f"{v:>12d}"
          if isinstance(v, int)
          else f"{v:>12.4f}"
      )
    lines.append(f"{name:<{width}}" + "".join(cells))
  return "\n".join(lines)
