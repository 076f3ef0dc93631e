import functools
import json
import os
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import optax
import pytest
from jax.extend import core as jcore

from conftest import memory_source, run_python, tiny_batch, tiny_config
from dallex import train
from dallex.data import device_cache
from dallex.models import cpu_kernels
from dallex.objective import build_objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_jit_sharded_pmap_and_fsdp_steps_agree_on_8_devices():
  out = run_python(
      "tests/helpers/parallel_equivalence.py", "8", devices=8, check=True
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["steps"] == 2
  # Most of the fsdp state is split (parameters, EMA and Adam's moments).
  split, total = result["fsdp_split_bytes"]
  assert split > 0.9 * total, result["fsdp_split_bytes"]
  for kind in ("sharded", "pmap", "fsdp"):
    assert result[kind]["param_diff"] < 1e-5, result
    assert (
        result[kind]["loss_diff"] < 1e-5 * 100
    ), result  # losses are O(1-10): relative 1e-5


_ADAM = dict(lr=1e-3, b1=0.0, b2=0.99, eps=1e-8, warmup_steps=2, clip_norm=1.0)


def _tiny_state(resolution=8):
  config = tiny_config(resolution=resolution)
  objective = build_objective(config)
  tx = train.make_optimizer(ml_collections.ConfigDict(_ADAM))
  batch = tiny_batch(config, 4)
  make = functools.partial(train.create_train_state, objective, tx, tx)
  state = jax.jit(lambda k: make(k, batch))(jax.random.key(0))
  step_fn = functools.partial(
      train.train_step, objective=objective, g_tx=tx, d_tx=tx, seed=0, d_steps=2
  )
  return state, step_fn, batch, make


@pytest.fixture(scope="module")
def loop_step():
  """The tiny model's step compiled as the loop compiles it (batch sharded, state
  replicated and donated), a way to get fresh states, and a batch."""
  state, step_fn, batch, make = _tiny_state()
  mesh = train.data_mesh(jax.devices()[:1])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  host_state = jax.tree.map(np.asarray, state)
  return types.SimpleNamespace(
      step=train.jit_sharded_step(step_fn, mesh),
      batch=batch,
      fresh=lambda: jax.device_put(host_state, replicated),
      eager=lambda: make(jax.random.key(0), batch),
      put=lambda b: jax.device_put(b, rows),
  )


def test_a_state_made_outside_jit_can_be_donated_to_the_step(loop_step):
  """The README's way: create_train_state called eagerly, then the donating
  step (EMA and G's parameters must not share buffers)."""
  state = loop_step.eager()
  g0 = jax.tree.map(np.asarray, state.g_params)
  assert jax.tree.all(
      jax.tree.map(np.array_equal, g0, jax.device_get(state.ema_params))
  )
  state, metrics = loop_step.step(state, loop_step.batch)
  assert int(state.step) == 1 and float(metrics["finite"]) == 1.0
  moved = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), g0, jax.device_get(state.g_params)
  )
  assert any(jax.tree.leaves(moved))


def test_non_finite_step_changes_nothing_and_is_counted(loop_step):
  step, batch, state = loop_step.step, loop_step.batch, loop_step.fresh()
  bad = dict(
      batch,
      image=np.where(
          np.arange(batch["image"].size).reshape(batch["image"].shape) == 5,
          np.nan,
          batch["image"],
      ).astype(np.float32),
  )
  before = jax.tree.map(np.asarray, state)
  s1, m1 = step(state, loop_step.put(bad))
  assert float(m1["finite"]) == 0.0 and np.isnan(float(m1["d_grad_norm"]))
  assert (
      int(s1.step) == 1
      and int(s1.nonfinite) == 1
      and int(s1.nonfinite_total) == 1
  )
  for a, b in zip(
      jax.tree.leaves(
          (
              before.g_params,
              before.d_params,
              before.g_opt_state,
              before.d_opt_state,
              before.ema_params,
          )
      ),
      jax.tree.leaves(
          (
              s1.g_params,
              s1.d_params,
              s1.g_opt_state,
              s1.d_opt_state,
              s1.ema_params,
          )
      ),
  ):
    np.testing.assert_array_equal(a, b)
  s2, _ = step(s1, loop_step.put(bad))
  assert int(s2.nonfinite) == 2
  # A good step resets the run, not the total.
  s3, m3 = step(s2, loop_step.put(batch))
  assert (
      float(m3["finite"]) == 1.0
      and int(s3.nonfinite) == 0
      and int(s3.nonfinite_total) == 2
  )
  assert (
      0 < float(m3["d_grad_norm"]) < np.inf
      and 0 < float(m3["g_grad_norm"]) < np.inf
  )
  # The good step moves every parameter but those whose gradient is zero at
  # init by construction: D's unconditional bias while every hinge margin is
  # active (1 - 1), and G's behind the zero-initialised style projections
  # (the mapping and the conditioning).
  unchanged = lambda a, b: {
      jax.tree_util.keystr(p)
      for (p, x), y in zip(
          jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
      )
      if np.array_equal(x, y)
  }
  assert unchanged(before.d_params, s3.d_params) <= {
      "['params']['head']['uncond']['bias']"
  }
  still = unchanged(before.g_params, s3.g_params)
  assert still and all(
      "mapping_" in p or "conditioning" in p for p in still
  ), still


def test_loop_step_donates_its_state_copies_nothing_and_compiles_once(
    loop_step,
):
  """The old state's buffers are reused (donated), no implicit host<->device
  transfer happens inside the step, and later steps reuse the first compilation.
  """
  step, state = loop_step.step, loop_step.fresh()
  compiles = []

  def listen(event, seconds, **kwargs):
    del seconds, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  # Compiled at most here.
  state, _ = step(state, loop_step.put(loop_step.batch))
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for seed in (1, 2, 3):
      device_batch = loop_step.put(
          tiny_batch(tiny_config(resolution=8), 4, seed=seed)
      )
      old_leaves = jax.tree.leaves(state)
      with jax.transfer_guard("disallow"):
        state, metrics = step(state, device_batch)
      assert all(leaf.is_deleted() for leaf in old_leaves)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  assert int(state.step) == 4 and float(metrics["finite"]) == 1.0


def _primitives(jaxpr: jcore.Jaxpr) -> set[str]:
  """The primitives ``jaxpr`` runs, also inside the jaxprs it calls."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jcore.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jcore.Jaxpr):
          names |= _primitives(sub)
  return names


def test_the_cached_step_has_no_control_flow_that_waits_for_the_device():
  """A GPU's host reads a conditional's predicate, and a loop's condition
  each turn, back from the device before it queues more work, so a step with
  either cannot be queued while the one before runs (RESULTS.md section 30:
  on an H200 the loop ran at half the speed of the step alone). Scans, whose
  length is fixed, need no such read. Traced as GPUs and TPUs run it; on CPU
  the non-finite guard stays a cond."""
  state, step_fn, _, _ = _tiny_state()
  length = tiny_config(resolution=8).model.text.max_length
  cache = device_cache.load(memory_source(40), resolution=8, max_length=length)
  # A new function for each trace: jax caches a trace by the function.
  primitives = lambda: _primitives(
      jax.make_jaxpr(
          lambda s, c: step_fn(
              s, device_cache.batch(c, s.step, seed=0, batch_size=4)
          )
      )(state, cache).jaxpr
  )
  with cpu_kernels.off():
    used = primitives()
  assert "scan" in used and "dot_general" in used  # it looked inside
  assert not used & {"while", "cond"}
  assert "cond" in primitives()


def test_d_steps_updates_the_discriminator_that_often_per_generator_update(
    loop_step,
):
  """The loop's step has d_steps=2: Adam has counted two D updates and one G update."""
  state, _ = loop_step.step(loop_step.fresh(), loop_step.put(loop_step.batch))
  adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  counts = lambda opt_state: [
      int(x.count) for x in jax.tree.leaves(opt_state, is_leaf=adam) if adam(x)
  ]
  assert counts(state.d_opt_state) == [2] and counts(state.g_opt_state) == [1]


def test_ema_is_the_warmed_up_average_of_the_updated_generator(loop_step):
  """ema_t+1 = d_t * ema_t + (1 - d_t) * g_t+1, with d_t = ema_decay(t): the
  generator after the step's update, not before."""
  state = loop_step.fresh()
  ema = jax.tree.map(np.asarray, state.ema_params)
  for t in range(2):
    state, _ = loop_step.step(state, loop_step.put(loop_step.batch))
    decay = float(train.ema_decay(np.int32(t), 0.999))
    g, new = jax.tree.map(np.asarray, (state.g_params, state.ema_params))
    assert decay == pytest.approx((1 + t) / (10 + t))
    expected = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, ema, g)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
        new,
        expected,
    )
    assert not all(
        np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(g))
    )
    ema = new


def test_the_generator_update_is_its_loss_gradient_through_the_shared_pass():
  """With plain SGD of rate 1 the step's G update is minus its gradient: the
  gradient of ``generator_loss`` (diversity term included) at the D the step
  has just updated, with the noise the step draws, though the step computes it
  by pulling back through the pass it shared with the D update."""
  config = tiny_config(resolution=8)
  config.loss.update(diversity=5.0, diversity_target=1.0, diversity_pairs=2)
  objective = build_objective(config)
  sgd = optax.sgd(1.0)
  batch = tiny_batch(config, 4)
  state = jax.jit(
      lambda k: train.create_train_state(objective, sgd, sgd, k, batch)
  )(jax.random.key(0))
  step = jax.jit(
      functools.partial(
          train.train_step, objective=objective, g_tx=sgd, d_tx=sgd, seed=3
      )
  )
  new, metrics = step(state, batch)
  # A target of 1 (images in [-1, 1]) is beyond reach: the term is active.
  assert float(metrics["g_diversity_shortfall"]) > 0.5
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), 1)
  indexed = dict(batch, index=np.arange(4))
  want = jax.jit(
      jax.grad(
          lambda g: objective.generator_loss(g, new.d_params, indexed, key)[0]
      )
  )(state.g_params)
  got = jax.tree.map(lambda a, b: a - b, state.g_params, new.g_params)
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-3, atol=1e-5),
      got,
      want,
  )


def test_batch_must_divide_over_devices():
  with pytest.raises(
      ValueError, match="batch_size=10 is not divisible by the 8 devices"
  ):
    train.check_batch_size(10, 8)
  train.check_batch_size(16, 8)


def test_ema_decay_warms_up():
  decays = [
      float(train.ema_decay(np.int32(t), 0.999)) for t in (0, 10, 100, 100000)
  ]
  assert (
      decays[0] == pytest.approx(0.1)
      and decays[0] < decays[1] < decays[2] < 0.999
  )
  assert decays[3] == pytest.approx(0.999)


def test_optimiser_states_are_flattened_as_the_config_asks_unless_fsdp_splits_them():
  params = {"a": np.ones((3, 4), np.float32), "b": np.ones((5,), np.float32)}
  sizes = lambda tx: sorted(
      x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim
  )
  optim = ml_collections.ConfigDict(dict(g=_ADAM, d=_ADAM, flatten=True))
  # Adam's two moments: one vector of all 17 parameters each, or per leaf.
  assert sizes(train.make_optimizers(optim)[0]) == [17, 17]
  assert sizes(train.make_optimizers(optim, fsdp=2)[1]) == [5, 5, 12, 12]
  optim.flatten = False
  assert sizes(train.make_optimizers(optim)[0]) == [5, 5, 12, 12]


def test_two_processes_train_like_one(tmp_path):
  """jax.distributed on localhost: two processes, each with half of the global
  batch, train like one; on one shared data directory, process 0 builds a
  missing dataset while the other waits, and the device cache gives both the
  batches one process gets."""
  import socket

  from PIL import Image

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  folder = tmp_path / "folder"
  folder.mkdir()
  with open(folder / "metadata.jsonl", "w") as f:
    for i in range(20):
      Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(folder / f"{i}.png")
      f.write(
          json.dumps({"file_name": f"{i}.png", "text": f"image {i}"}) + "\n"
      )
  helper = "tests/helpers/multihost_train.py"
  shared, alone = str(tmp_path / "shared_data"), str(tmp_path / "own_data")
  # The single-process reference runs alongside: compiling is mostly single-threaded.
  runs = [
      [str(i), str(tmp_path / f"p{i}.npy"), str(folder), shared, str(port)]
      for i in range(2)
  ]
  runs.append(["single", str(tmp_path / "single.npy"), str(folder), alone])
  procs = [
      subprocess.Popen(
          [sys.executable, helper, *args],
          cwd=ROOT,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for args in runs
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert all("devices 2 processes 2 step 3" in out for out, _ in outs[:2])
  assert "devices 1 processes 1 step 3" in outs[2][0]
  p0, p1, one = (np.load(tmp_path / f"{n}.npy") for n in ("p0", "p1", "single"))
  np.testing.assert_array_equal(p0, p1)
  # After one step only the order of float sums differs. Later steps can part
  # further where a value sits on a kink (hinge, leaky ReLU, the output clip's
  # gradient mask) and a 1e-7 difference puts it on the other side: measured
  # 3e-4 at step 3 on one CPU, 1e-7 at steps 1-2. A wrong all-reduce shows
  # at step 1 already; the last step bounds how far the runs drift apart.
  np.testing.assert_allclose(p0[0], one[0], atol=1e-5)
  np.testing.assert_allclose(p0[-1], one[-1], atol=2e-3)
  # TFDS announces a build; only process 0 built the shared one.
  built = ["Downloading and preparing" in out + err for out, err in outs]
  assert built == [True, False, True], [err[-2000:] for _, err in outs]
  ids = [np.load(tmp_path / f"{n}_ids.npy") for n in ("p0", "p1", "single")]
  assert ids[0].shape == (3, 8, 48)
  np.testing.assert_array_equal(ids[0], ids[2])
  np.testing.assert_array_equal(ids[1], ids[2])


def test_fsdp_splits_each_large_leaf_along_its_largest_dividing_dimension():
  mesh = jax.sharding.AbstractMesh((2, 4), ("data", "fsdp"))
  leaves = {
      "kernel": jax.ShapeDtypeStruct((2, 64, 96), np.float32),
      "no_divisor": jax.ShapeDtypeStruct((3, 333, 5), np.float32),
      "small": jax.ShapeDtypeStruct((64,), np.float32),
      "scalar": jax.ShapeDtypeStruct((), np.int32),
  }
  specs = {k: s.spec for k, s in train.state_shardings(leaves, mesh).items()}
  P = jax.sharding.PartitionSpec
  assert specs == {
      "kernel": P(None, None, "fsdp"),
      "no_divisor": P(),
      "small": P(),
      "scalar": P(),
  }
  with pytest.raises(
      ValueError, match="train.fsdp=3 must be a positive divisor of the 8"
  ):
    train.check_fsdp(3, 8)
