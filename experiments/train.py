"""Trains a dallex model; resumes automatically when the workdir has checkpoints.

    python -m experiments.train --config experiments/configs/shapes32.py --workdir runs/shapes32 \\
        [--config.train.steps=N ...]

With several hosts, pass --distributed (or set DALLEX_DISTRIBUTED=1, or
JAX_COORDINATOR_ADDRESS) so jax.distributed.initialize() runs first; it finds
the cluster itself on TPU VMs and SLURM, or from the JAX_* variables.
"""

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dallex import hugepages

flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics, events and samples go.",
    required=True,
)
flags.DEFINE_bool(
    "start_over",
    False,
    "Move an earlier run's outputs in --workdir aside (into replaced_<time>/, "
    "nothing is deleted) and train afresh.",
)
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host)."
)
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO.
  # Imported here: jax.distributed.initialize() must run before anything
  # touches a backend, and the library is imported only after it.
  import jax

  if (
      FLAGS.distributed
      or os.environ.get("DALLEX_DISTRIBUTED") == "1"
      or os.environ.get("JAX_COORDINATOR_ADDRESS")
  ):
    jax.distributed.initialize()
  from dallex.loop import RunError, train_and_evaluate
  from dallex.workdir_lock import WorkdirBusyError

  # Orbax logs a failed background save with a traceback from each of its
  # threads; the loop reports the failure once, clearly.
  logging.get_absl_handler().addFilter(_without_tracebacks)
  # Orbax's own event loops report the same failure again as futures whose
  # exception "was never retrieved", after the message below.
  pylogging.getLogger("asyncio").setLevel(pylogging.CRITICAL)
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.start_over)
  except (RunError, WorkdirBusyError) as e:
    # One write, now: Orbax's threads may still be printing while the
    # interpreter shuts down, and sys.exit(message) would print it then.
    sys.stderr.write(f"dallex: {type(e).__name__}: {e}\n")
    sys.stderr.flush()
    sys.exit(1)


def _without_tracebacks(record) -> bool:
  """Keeps Orbax's error lines, without their tracebacks."""
  if "orbax" in record.pathname:
    record.exc_info = record.exc_text = None
  return True


if __name__ == "__main__":
  hugepages.relaunch()
  flags.mark_flags_as_required(["config"])
  app.run(main)
