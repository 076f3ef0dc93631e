"""Runs 2 train steps four ways on 8 CPU devices and prints the max differences
from one device: jit with the batch sharded, pmap, and jit with the state split
over an fsdp axis of 4 (data over 2), with the optimiser the loop gives it.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the test does).
"""

import concurrent.futures
import functools
import json
import sys
import warnings

warnings.filterwarnings("ignore")
import jax  # noqa: E402
import numpy as np  # noqa: E402
import ml_collections  # noqa: E402

sys.path.insert(0, "tests")
from conftest import tiny_batch, tiny_config  # noqa: E402
from dallex import train  # noqa: E402
from dallex.objective import build_objective  # noqa: E402

assert jax.device_count() == 8, jax.devices()
config = tiny_config(resolution=int(sys.argv[1]) if len(sys.argv) > 1 else 8)
objective = build_objective(config)
# eps=1: Adam's m / (sqrt(v) + eps) turns float32 rounding in near-zero
# gradients into full-size steps; a large eps compares the parallel arithmetic,
# not that amplification.
opt = ml_collections.ConfigDict(
    dict(lr=1e-2, b1=0.0, b2=0.99, eps=1.0, warmup_steps=0, clip_norm=0.0)
)
g_tx = d_tx = train.make_optimizer(opt)
tree_tx = train.make_optimizer(opt, flatten=False)
batches = [tiny_batch(config, 8, seed=s) for s in range(2)]
step_fn = functools.partial(
    train.train_step,
    objective=objective,
    g_tx=g_tx,
    d_tx=d_tx,
    seed=0,
    d_steps=1,
    ema=0.999,
)
state0 = jax.jit(
    lambda k: train.create_train_state(objective, g_tx, d_tx, k, batches[0])
)(jax.random.key(0))
fsdp_state0 = jax.jit(
    lambda k: train.create_train_state(
        objective, tree_tx, tree_tx, k, batches[0]
    )
)(jax.random.key(0))
fsdp_mesh = train.data_mesh(fsdp=4)
fsdp_sharding = train.state_shardings(fsdp_state0, fsdp_mesh)


def compile_all():
  """The three programs, compiled side by side: XLA compiles outside the GIL and
  each compile is mostly one thread, so this halves the wait on 2 cores."""
  host = jax.tree.map(np.asarray, state0)
  pmapped = train.replicate_for_pmap(host, 8)
  jobs = {
      "single": lambda: jax.jit(step_fn, donate_argnums=0)
      .lower(host, batches[0])
      .compile(),
      "sharded": lambda: train.jit_sharded_step(step_fn, train.data_mesh())
      .lower(host, batches[0])
      .compile(),
      "pmap": lambda: train.pmap_step(step_fn)
      .lower(pmapped, train.shard_for_pmap(batches[0], 8))
      .compile(),
      "fsdp": lambda: train.jit_sharded_step(
          functools.partial(step_fn, g_tx=tree_tx, d_tx=tree_tx),
          fsdp_mesh,
          fsdp_sharding,
      )
      .lower(jax.device_put(fsdp_state0, fsdp_sharding), batches[0])
      .compile(),
  }
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    futures = {kind: pool.submit(job) for kind, job in jobs.items()}
    return {kind: f.result() for kind, f in futures.items()}


compiled = compile_all()


def run(kind):
  fn = compiled[kind]
  state = jax.tree.map(np.asarray, state0)
  losses = []
  if kind == "pmap":
    state = train.replicate_for_pmap(state, 8)
    for b in batches:
      state, m = fn(state, train.shard_for_pmap(b, 8))
      losses.append({k: float(v[0]) for k, v in m.items()})
    state = jax.tree.map(lambda x: x[0], state)
  elif kind == "fsdp":
    state = jax.device_put(fsdp_state0, fsdp_sharding)
    for b in batches:
      state, m = fn(state, b)
      losses.append({k: float(v) for k, v in m.items()})
    # What the split state holds: (bytes split over fsdp, all bytes).
    split = [
        (x.nbytes, x.sharding.spec != jax.sharding.PartitionSpec())
        for x in jax.tree.leaves(state)
    ]
    out["fsdp_split_bytes"] = [
        sum(n for n, s in split if s),
        sum(n for n, _ in split),
    ]
  else:
    for b in batches:
      state, m = fn(state, b)
      losses.append({k: float(v) for k, v in m.items()})
  return jax.tree.map(np.asarray, state), losses


out = {}
ref_state, ref_losses = run("single")
for kind in ("sharded", "pmap", "fsdp"):
  state, losses = run(kind)
  param_diff = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(
          jax.tree.leaves(
              (ref_state.g_params, ref_state.d_params, ref_state.ema_params)
          ),
          jax.tree.leaves((state.g_params, state.d_params, state.ema_params)),
      )
  )
  loss_diff = max(
      abs(r[k] - x[k]) for r, x in zip(ref_losses, losses) for k in r
  )
  out[kind + "_losses"] = [
      [abs(r[k] - x[k]) for k in sorted(r)] for r, x in zip(ref_losses, losses)
  ]
  out[kind] = {"param_diff": param_diff, "loss_diff": loss_diff}
out["steps"] = int(ref_state.step)
print(json.dumps(out))
