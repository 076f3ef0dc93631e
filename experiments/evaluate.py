"""Evaluates a trained run's EMA generator on dataset splits: a table, a JSON
file and a sheet of the worst samples.

    python -m experiments.evaluate --workdir runs/shapes32 --split test,heldout --num 2000 \\
        --out eval.json [--step N] [--noema] [--inception inception_fid.npz]

Per split (and caption language, for a run trained on both): the shapes
checker's accuracies (dallex_shapes); on other data nearest-real-image
retrieval and, for a caption folder with labels, the classifier of real images
reading the generated ones (dallex/evaluation/realdata.py); R-precision from
the model's own contrastive heads (self-judgement), FID/KID when --inception
names converted weights (see dallex/evaluation/inception.py). On
dallex_shapes, the diversity ratios (dallex/evaluation/diversity.py): how
much a caption's noise seeds vary its objects' centre, size and colour
against the dataset's own jitter. The worst-scored samples of the first
split, with their captions and what was wrong, go to --worst_png; on other
data, real images beside generated ones to OUT_pairs.png.
"""

import json
import os

from absl import app, flags, logging

from dallex import hugepages
from dallex.evaluation import suite
from dallex.sampling import load

flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_string(
    "split",
    None,
    "Comma-separated splits (default: test,heldout for "
    "dallex_shapes, train for a caption folder, else test).",
)
flags.DEFINE_list(
    "language",
    None,
    "dallex_shapes: caption languages to evaluate, each on the same scenes "
    "(en, zh, mixed; default: the run's, both en and zh for a mixed run).",
)
flags.DEFINE_integer(
    "num",
    2000,
    "Samples per split (the first examples of each).",
    lower_bound=1,
)
flags.DEFINE_integer("seed", 0, "Noise seed.", lower_bound=0)
flags.DEFINE_integer(
    "diversity_captions",
    100,
    "dallex_shapes: captions of the first split drawn diversity_seeds times each "
    "to compare their spread with the data's (0: skip).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "diversity_seeds",
    16,
    "Images per caption for the diversity ratios.",
    lower_bound=2,
)
flags.DEFINE_string("out", "eval.json", "JSON to write.")
flags.DEFINE_string(
    "worst_png", None, "PNG of the worst samples (default: next to --out)."
)
flags.DEFINE_string(
    "inception", None, "FID Inception weights (.npz state dict) for FID/KID."
)
flags.DEFINE_string(
    "fid_cache",
    os.path.expanduser("~/.cache/dallex/fid"),
    "Folder caching the real images' Inception features ('' for none).",
)
flags.DEFINE_string("data_dir", None, "Override the run's data.data_dir.")
flags.DEFINE_integer("batch_size", 64, "Generation batch size.", lower_bound=1)
flags.DEFINE_integer(
    "step",
    None,
    "Evaluate this checkpoint (default: the newest).",
    lower_bound=0,
)
flags.DEFINE_bool(
    "ema", True, "Evaluate the EMA generator (--noema: the online one)."
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers.
  sampler = load(
      FLAGS.workdir, with_discriminator=True, step=FLAGS.step, ema=FLAGS.ema
  )
  data = sampler.config.data
  if FLAGS.data_dir:
    data.data_dir = FLAGS.data_dir
  default = {"dallex_shapes": "test,heldout", "caption_folder": "train"}.get(
      data.name, "test"
  )
  splits = [s.strip() for s in (FLAGS.split or default).split(",") if s.strip()]
  inception, inception_id = None, ""
  if FLAGS.inception:
    # Imported only when asked for: it loads the Inception network's code.
    from dallex.evaluation.inception import load_inception

    inception = load_inception(FLAGS.inception)
    stat = os.stat(FLAGS.inception)
    inception_id = (
        f"{os.path.abspath(FLAGS.inception)}:{stat.st_size}:{stat.st_mtime_ns}"
    )
  try:
    variants = suite.language_variants(data, FLAGS.language)
  except ValueError as e:
    raise app.UsageError(f"--language: {e}") from None
  results, first, first_set = {}, None, None
  for name, variant, split in [
      (split + suffix, variant, split)
      for suffix, variant in variants
      for split in splits
  ]:
    eval_set = suite.load_eval_set(variant, split, FLAGS.num)
    result = suite.evaluate(
        sampler,
        eval_set,
        FLAGS.seed,
        inception=inception,
        inception_id=inception_id,
        fid_cache=FLAGS.fid_cache or None,
        batch_size=FLAGS.batch_size,
    )
    results[name] = result.metrics
    if first is None:
      first, first_set = result, eval_set
  spread = None
  if data.name == "dallex_shapes" and FLAGS.diversity_captions:
    spread = suite.diversity_report(
        sampler,
        suite.load_eval_set(
            variants[0][1], splits[0], FLAGS.diversity_captions
        ),
        FLAGS.diversity_captions,
        FLAGS.diversity_seeds,
        FLAGS.seed,
    )
  report = dict(
      workdir=os.path.abspath(FLAGS.workdir),
      step=sampler.step,
      seed=FLAGS.seed,
      num=FLAGS.num,
      ema=FLAGS.ema,
      splits=results,
  )
  if spread is not None:
    report["diversity"] = spread
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(report, f, indent=2)
  worst = suite.worst_samples_png(
      first, FLAGS.worst_png or os.path.splitext(FLAGS.out)[0] + "_worst.png"
  )
  pairs = None
  if data.name != "dallex_shapes":
    pairs = suite.pairs_png(
        first, first_set, os.path.splitext(FLAGS.out)[0] + "_pairs.png"
    )
  print(f"step {sampler.step}, seed {FLAGS.seed}, {FLAGS.workdir}")
  print(suite.format_table(results))
  if spread is not None:
    print(
        f"diversity over {FLAGS.diversity_captions} {splits[0]} captions x "
        f"{FLAGS.diversity_seeds} seeds, generated / real spread: "
        + ", ".join(
            f"{k} {spread[f'{k}_ratio']:.2f}"
            for k in ("centre", "size", "colour")
        )
    )
  if "r_precision" in first.metrics:
    print("(r_precision: the model's own heads judging its images)")
  print(
      f"-> {FLAGS.out}"
      + (f"; worst samples of {splits[0]} -> {worst}" if worst else "")
      + (f"; real beside generated -> {pairs}" if pairs else "")
  )


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
