"""Where does a two-object caption lose which colour belongs to which object?

    python -m experiments.probe_binding --workdir runs/shapes32 --num 4000
    python -m experiments.probe_binding --config experiments/configs/shapes32.py \\
        --supervised_steps 1500 [--lr 1e-4]

With --workdir: linear probes of each object's own and the other object's
colour on the run's generator (its text token ending the object's phrase, its
grid token under the object's cell), over the two-object captions among the
first --num `test` examples (experiments/binding_probes.py). With
--supervised_steps: trains a fresh copy of the config's caption-to-grid path
to name each grid token's colour, directly supervised, and prints the curve:
whether the architecture can bind when it is asked to.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from dallex import hugepages
from dallex.evaluation import suite
from dallex.sampling import load
from experiments import binding_probes as binding

flags.DEFINE_string("workdir", None, "A training workdir to probe.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config (--supervised_steps).", lock_config=True
)
flags.DEFINE_integer(
    "supervised_steps",
    0,
    "Train a fresh front end this many steps.",
    lower_bound=0,
)
flags.DEFINE_float(
    "lr", 1e-3, "Adam learning rate of the supervised front end."
)
flags.register_validator("lr", lambda v: v > 0, "--lr must be > 0")
flags.DEFINE_integer(
    "eval_every",
    250,
    "Score the supervised front end every this many steps.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "num",
    4000,
    "Test examples read (about half have two objects).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "step", None, "Probe this checkpoint (default: the newest).", lower_bound=0
)
flags.DEFINE_bool(
    "ema", True, "Probe the EMA generator (--noema: the online one)."
)
flags.DEFINE_string("out", None, "Also write the result as JSON here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers.
  if (FLAGS.workdir is None) == (FLAGS.supervised_steps <= 0):
    raise app.UsageError(
        "give either --workdir or --config with --supervised_steps > 0"
    )
  if FLAGS.workdir:
    sampler = load(FLAGS.workdir, step=FLAGS.step, ema=FLAGS.ema)
    eval_set = suite.load_eval_set(sampler.config.data, "test", FLAGS.num)
    result = dict(
        step=sampler.step, **binding.binding_probes(sampler, eval_set.captions)
    )
    print(
        f"step {sampler.step}, {result['num_objects']} objects of two-object captions"
    )
    print(f"{'features':<10}{'own colour':>12}{'other colour':>14}")
    for name in ("text", "grid"):
      print(
          f"{name:<10}{result[f'{name}_own_colour']:>12.3f}"
          f"{result[f'{name}_other_colour']:>14.3f}"
      )
    print(
        f"grid token contrast (variance differing between one image's tokens): "
        f"{result['grid_token_contrast']:.4f}"
    )
  else:
    if FLAGS.config is None:
      raise app.UsageError("--supervised_steps needs --config")
    curve = binding.train_front_end(
        FLAGS.config.model,
        FLAGS.supervised_steps,
        lr=FLAGS.lr,
        eval_every=FLAGS.eval_every,
        seed=FLAGS.config.seed,
    )
    result = dict(curve=curve)
    for step, accuracy in curve:
      print(
          f"step {step:>6}  colour under each object's grid tokens {accuracy:.3f}"
      )
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
