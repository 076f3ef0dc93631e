"""Draws images for prompts from a trained run's EMA generator.

    python -m experiments.sample --workdir runs/shapes32 \\
        --prompt "a small red circle on the left" [--prompt ...] [--prompts_file F] \\
        --seed 0 --num_per_prompt 4 --out grid.png [--out_npz images.npz] [--step N]
"""

import numpy as np
from absl import app, flags, logging

from dallex import hugepages, visualize
from dallex.sampling import load

flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
flags.DEFINE_string(
    "prompts_file",
    None,
    "UTF-8 file, one prompt per line; empty lines ignored.",
)
flags.DEFINE_integer("seed", 0, "Noise seed.", lower_bound=0)
flags.DEFINE_integer(
    "num_per_prompt", 4, "Images per prompt (one grid row each).", lower_bound=1
)
flags.DEFINE_float(
    "truncation",
    1.0,
    "Noise truncation: > 0, 1 for none, smaller for less variety.",
)
flags.register_validator(
    "truncation", lambda v: v > 0, "--truncation must be > 0 (1.0 for none)"
)
flags.DEFINE_string("out", "grid.png", "PNG grid to write.")
flags.DEFINE_string(
    "out_npz", None, "Also write images (uint8 [N,H,W,3]) and prompts here."
)
flags.DEFINE_integer(
    "step", None, "Use this checkpoint (default: the newest).", lower_bound=0
)
FLAGS = flags.FLAGS


def read_prompts(path: str) -> list[str]:
  """Non-empty lines of a UTF-8 file; a clear error if it is missing or not UTF-8."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except FileNotFoundError:
    raise SystemExit(f"--prompts_file {path!r} does not exist") from None
  except UnicodeDecodeError as e:
    raise SystemExit(
        f"--prompts_file {path!r} is not UTF-8 text ({e})"
    ) from None


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers.
  prompts = list(FLAGS.prompt) + (
      read_prompts(FLAGS.prompts_file) if FLAGS.prompts_file else []
  )
  if not prompts:
    raise SystemExit("give at least one --prompt or a --prompts_file")
  sampler = load(FLAGS.workdir, step=FLAGS.step)
  images = sampler.generate(
      prompts, FLAGS.seed, FLAGS.num_per_prompt, FLAGS.truncation
  )
  scale = max(1, 64 // images.shape[1])
  path = visualize.save_png(
      visualize.make_grid(images, FLAGS.num_per_prompt), FLAGS.out, scale
  )
  if FLAGS.out_npz:
    np.savez(
        FLAGS.out_npz,
        images=images,
        prompts=np.array(
            [p for p in prompts for _ in range(FLAGS.num_per_prompt)]
        ),
    )
  print(
      f"{len(images)} images of step {sampler.step} ({len(prompts)} prompts) -> {path}"
  )


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
