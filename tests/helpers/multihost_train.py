"""Trains 3 steps of the tiny model on a fixed global batch of 8, and saves the
parameters after each step as a [3, P] array (one flat vector per step); then
opens a caption folder (built into DATA_DIR if missing), holds it in the
device cache and saves the token ids of its first 3 batches of 8 ([3, 8, L],
OUT with _ids before .npy).

    python multihost_train.py single OUT.npy FOLDER DATA_DIR
    python multihost_train.py PROCESS_ID OUT.npy FOLDER DATA_DIR PORT   # one of two processes

Each of the two processes feeds only its half of the global batch; the jit-
sharded step assembles the global arrays and all-reduces across processes.
"""

import functools
import sys
import warnings

warnings.filterwarnings("ignore")
import jax  # noqa: E402

mode, out_path, folder, data_dir = sys.argv[1:5]
if mode != "single":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{sys.argv[5]}",
      num_processes=2,
      process_id=int(mode),
  )

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, "tests")
from conftest import tiny_batch, tiny_config  # noqa: E402
from dallex import train  # noqa: E402
from dallex.objective import build_objective  # noqa: E402

config = tiny_config(resolution=8)
objective = build_objective(config)
opt = ml_collections.ConfigDict(
    dict(lr=1e-2, b1=0.0, b2=0.99, eps=1.0, warmup_steps=0, clip_norm=0.0)
)
tx = train.make_optimizer(opt)
mesh = train.data_mesh()
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
global_batches = [tiny_batch(config, 8, seed=s) for s in range(3)]
rows = (
    slice(None) if mode == "single" else slice(4 * int(mode), 4 * int(mode) + 4)
)
state = jax.jit(
    lambda k: train.create_train_state(objective, tx, tx, k, global_batches[0]),
    out_shardings=replicated,
)(jax.random.key(0))
step = train.jit_sharded_step(
    functools.partial(
        train.train_step, objective=objective, g_tx=tx, d_tx=tx, seed=0
    ),
    mesh,
)
flats = []
for batch in global_batches:
  local = {k: v[rows] for k, v in batch.items()}
  state, _ = step(
      state,
      {
          k: jax.make_array_from_process_local_data(sharded, v)
          for k, v in local.items()
      },
  )
  leaves = jax.tree.leaves((state.g_params, state.d_params))
  flats.append(
      np.concatenate(
          [np.asarray(x.addressable_data(0)).ravel() for x in leaves]
      )
  )
np.save(out_path, np.stack(flats))

from jax.experimental import multihost_utils  # noqa: E402
from dallex.data import device_cache, sources  # noqa: E402

data = config.data
data.update(name="caption_folder", path=folder, data_dir=data_dir)
source = sources.open_source(data, "train")
cache = device_cache.put(
    device_cache.load(
        source, resolution=8, max_length=config.model.text.max_length
    ),
    replicated,
)
gather = jax.jit(
    functools.partial(device_cache.batch, seed=0, batch_size=8),
    out_shardings=sharded,
)
ids = [
    multihost_utils.process_allgather(gather(cache, s)["ids"], tiled=True)
    for s in range(3)
]
np.save(out_path.replace(".npy", "_ids.npy"), np.stack(ids))
print(
    "devices",
    jax.device_count(),
    "processes",
    jax.process_count(),
    "step",
    int(np.asarray(state.step.addressable_data(0))),
)
