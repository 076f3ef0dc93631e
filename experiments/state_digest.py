"""Prints a SHA-256 digest of a checkpoint's whole train state, to show that
two runs (two commits, two machines) trained to the same bits.

    python -m experiments.state_digest --workdir runs/shapes32 [--step 200]

Reads the checkpoint as saved, with no config: a workdir of any version
whose state is a tree of arrays. Each leaf is hashed with its path, dtype and
shape, in path order; the digest of each top-level part is printed too.
"""

import hashlib
import os

import jax
import numpy as np
from absl import app, flags, logging
import orbax.checkpoint as ocp

flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_integer(
    "step", None, "This checkpoint (default: the newest).", lower_bound=0
)
FLAGS = flags.FLAGS


def digest(tree) -> str:
  """SHA-256 of every leaf of ``tree`` (its path, dtype, shape and bytes)."""
  h = hashlib.sha256()
  for path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(tree)[0],
      key=lambda item: jax.tree_util.keystr(item[0]),
  ):
    leaf = np.asarray(leaf)
    h.update(
        f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|".encode()
    )
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  directory = os.path.abspath(os.path.join(FLAGS.workdir, "checkpoints"))
  manager = ocp.CheckpointManager(
      directory,
      item_names=("state",),
      options=ocp.CheckpointManagerOptions(read_only=True),
  )
  try:
    step = FLAGS.step if FLAGS.step is not None else manager.latest_step()
    if step is None:
      raise SystemExit(f"no checkpoint in {directory}")
    state = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    state = state["state"]
  finally:
    manager.close()
  for name in sorted(state):
    print(f"{name:<16} {digest(state[name])}")
  print(f"{'state':<16} {digest(state)}  (step {step}, {directory})")


if __name__ == "__main__":
  app.run(main)
