r"""Measures dallex against this machine's own limit: train step, compile, sampling, input, devices.

    python -m experiments.benchmark [--config experiments/configs/shapes32.py] [--config.x=y] \
        [--out bench.json]

The headline is utilisation: the train step's FLOPs (XLA's own cost analysis
of the compiled step) per second, as a fraction of the dense matmul FLOP/s
measured in the same process and dtype. Absolute times vary between machines
and runs; that ratio says how close to the machine's limit the step runs.
XLA's cost analysis counts the body of a while loop once, whatever its trip
count, so FLOPs are read from the step compiled with its Transformer stacks
unrolled (``model.scan=False``: the same arithmetic) and its layers in
XLA's own forms (``cpu_kernels.off()``: the model's FLOPs, the same on every
backend); times are of the configured (scanned) step. FLOPs are always
counted by XLA:CPU, also on an accelerator: on an H200 (jax 0.11.2),
XLA:GPU's analysis counted 4.4 GFLOP for the bfloat16 ``shapes32`` step
that XLA:CPU counted at 20.4.
Sections: --only=train,profile,ops,products,compile,sample,serve,input,devices
picks some; ``serve`` is ``dallex.serving``'s requests/s with one client and
with 16; ``ops`` lists the instructions of the train step and of sampling by their
time in a ``jax.profiler`` trace; ``products`` times each of their matrix
products (dots and convolutions) compiled alone: the utilisation of the
products alone is about the most the whole can reach on this backend.
``--cores=1`` runs it all on one core: utilisation on one core against all of
them says how well XLA's kernels spread over cores.
"""

import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jcore
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from dallex import hugepages, noise, train
from dallex.data import pipeline, sources
from dallex.models import build_models, compute_dtype, cpu_kernels
from dallex.objective import build_objective, init_params
from dallex.sampling import sample
from dallex.text import ByteTokenizer

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "shapes32.py"
)
config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file.", lock_config=True
)
flags.DEFINE_string("out", None, "Write the results here as JSON.")
flags.DEFINE_string(
    "only",
    "train,profile,ops,products,compile,sample,serve,input,devices",
    "Sections to run.",
)
flags.DEFINE_integer(
    "steps", 10, "Timed train steps per repeat.", lower_bound=1
)
flags.DEFINE_integer(
    "repeats", 5, "Repeats; the median is reported.", lower_bound=1
)
flags.DEFINE_integer(
    "top_ops",
    12,
    "Rows listed per profile in the ops and products sections.",
    lower_bound=1,
)
flags.DEFINE_string(
    "depths", "2,4,8,16", "Transformer depths for the compile-time section."
)
flags.DEFINE_string(
    "sample_batches", "1,64", "Batch sizes for the sampling section."
)
flags.DEFINE_string(
    "devices", "1,2,4,8", "Device counts for the scaling section."
)
flags.DEFINE_integer(
    "cores",
    None,
    "Run on this many of the machine's CPU cores only (Linux): "
    "utilisation on one core against all shows how well the kernels use "
    "several.",
    lower_bound=1,
)
flags.DEFINE_bool(
    "devices_worker",
    False,
    "Internal: run the scaling section in this process.",
)
FLAGS = flags.FLAGS


def _times(fn, repeats: int) -> list[float]:
  """Wall times of ``repeats`` calls of ``fn()`` (which must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _median_time(fn, repeats: int) -> float:
  """Median wall time of ``fn()``: the typical speed of the measured code."""
  return statistics.median(_times(fn, repeats))


def _flops(compiled) -> float:
  """FLOPs of a compiled computation by XLA's cost analysis (0 when unavailable)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


@contextlib.contextmanager
def _cpu_counting():
  """A context in which new arrays and computations live on the host CPU, where
  the FLOPs are counted, and the layers trace XLA's own forms (see the module
  docstring)."""
  with jax.default_device(jax.devices("cpu")[0]), cpu_kernels.off():
    yield


def step_flops(config) -> float:
  """The train step's FLOPs, counted the same way on every backend."""
  with _cpu_counting():
    step, state, batch, _ = _train_setup(
        _unrolled(config), jax.devices("cpu")[:1], abstract=True
    )
    return _flops(step.lower(state, batch).compile())


def _unrolled(config):
  """The config with every Transformer stack unrolled, for counting FLOPs."""
  config = config.copy_and_resolve_references()
  config.model.scan = False
  return config


def matmul_flops_per_s(
    dtype, sizes: tuple[int, ...] | None = None, repeats: int = 10
) -> float:
  """The machine's practical limit: the best dense [n, n] @ [n, n] throughput in
  ``dtype`` over a few sizes (small ones underuse the cores, large ones the caches;
  an accelerator needs larger ones to fill its matrix units) and repeats (a shared
  VM's neighbours only ever slow a run down, so the fastest repeat is the best
  estimate of what the machine can do)."""
  if sizes is None:
    sizes = (
        (512, 1024, 2048)
        if jax.default_backend() == "cpu"
        else (2048, 4096, 8192)
    )
  best = 0.0
  f = jax.jit(lambda a, b: a @ b)
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    run = functools.partial(lambda a, b: f(a, b).block_until_ready(), a, b)
    run()
    best = max(best, 2.0 * n**3 / min(_times(run, repeats)))
  return best


def _train_setup(config, devices=None, batch=None, abstract=False):
  """(compiled step, state, device batch, batch size) as the training loop
  builds them; ``batch`` (host arrays) or one caption repeated over random
  images. ``abstract``: the state as shapes only, enough to lower the step
  (counting its FLOPs needs no initialised parameters)."""
  objective = build_objective(config)
  g_tx, d_tx = train.make_optimizers(config.optim)
  mesh = train.data_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = train.batch_sharding(mesh)
  res, length, b = (
      config.data.resolution,
      config.model.text.max_length,
      config.train.batch_size,
  )
  if batch is None:
    rng = np.random.default_rng(0)
    ids, mask = ByteTokenizer(length).encode(
        ["a small red circle on the left"] * b
    )
    batch = {
        "image": rng.uniform(-1, 1, (b, res, res, 3)).astype(np.float32),
        "ids": ids,
        "mask": mask,
    }
  make = lambda k: train.create_train_state(objective, g_tx, d_tx, k, batch)
  if abstract:
    # The step's own in_shardings place it.
    state = jax.eval_shape(make, jax.random.key(0))
  else:
    state = jax.jit(make, out_shardings=replicated)(jax.random.key(0))
  step_fn = train.configured_step(config, objective, g_tx, d_tx)
  return (
      train.jit_sharded_step(step_fn, mesh),
      state,
      jax.device_put(batch, rows),
      b,
  )


def _chain(step, state, batch, steps: int = 1) -> tuple[Callable, dict]:
  """A call that runs ``steps`` train steps chained from ``state`` and waits
  for them, and the dict whose ``"state"`` is the newest state."""
  holder = {"state": state}

  def run():
    metrics = None
    for _ in range(steps):
      holder["state"], metrics = step(holder["state"], batch)
    metrics["d_loss"].block_until_ready()

  return run, holder


def _time_steps(
    step, state, batch, steps: int, repeats: int
) -> tuple[float, object]:
  """Median seconds per step over ``repeats`` runs of ``steps`` chained steps."""
  run, holder = _chain(step, state, batch, steps)
  run()  # warm-up (the first call compiled already)
  return _median_time(run, repeats) / steps, holder["state"]


def bench_train(config, matmul: float) -> dict:
  """Steps/s, images/s, FLOPs per step and utilisation of the train step; memory."""
  step, state, batch, b = _train_setup(config, jax.devices()[:1])
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = step_flops(config)
  seconds, _ = _time_steps(compiled, state, batch, FLAGS.steps, FLAGS.repeats)
  memory = compiled.memory_analysis()
  out = dict(
      train_steps_per_s=1.0 / seconds,
      train_images_per_s=b / seconds,
      train_step_flops=flops,
      train_flops_per_s=flops / seconds,
      train_utilisation=flops / seconds / matmul,
      train_compile_seconds=compile_s,
  )
  if memory is not None:
    out["train_memory_bytes"] = dict(
        arguments=memory.argument_size_in_bytes,
        outputs=memory.output_size_in_bytes,
        temporaries=memory.temp_size_in_bytes,
        aliased=memory.alias_size_in_bytes,
        peak_estimate=(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        ),
    )
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    out["train_peak_device_bytes"] = stats["peak_bytes_in_use"]
  return out


def _profile_parts(config) -> dict:
  """The train step's parts as name -> (function, arguments), for ``config``'s models."""
  objective = build_objective(config)
  res, length, b = (
      config.data.resolution,
      config.model.text.max_length,
      config.train.batch_size,
  )
  ids, mask = ByteTokenizer(length).encode(
      ["a small red circle on the left"] * b
  )
  batch = {
      "image": np.random.default_rng(0)
      .uniform(-1, 1, (b, res, res, 3))
      .astype(np.float32),
      "ids": jnp.asarray(ids),
      "mask": jnp.asarray(mask),
      "index": jnp.arange(b),
  }
  g_params, d_params = jax.jit(lambda k: init_params(objective, k, batch))(
      jax.random.key(0)
  )
  key = jax.random.key(1)
  z, eps = noise.latents(key, batch["index"], objective.z_dim, objective.ca_dim)
  images = jnp.concatenate([batch["image"]] * 2)
  return {
      "generator forward": (
          lambda g: objective.generator.apply(
              g, batch["ids"], batch["mask"], z, eps
          ).images,
          (g_params,),
      ),
      "discriminator features, 2B images": (
          lambda d: objective.discriminator.apply(d, images, method="features")[
              0
          ],
          (d_params,),
      ),
      "discriminator text encoder": (
          lambda d: objective.discriminator.apply(
              d, batch["ids"], batch["mask"], method="encode_text"
          ),
          (d_params,),
      ),
      "D loss and gradient": (
          jax.grad(
              lambda d, g: objective.discriminator_loss(d, g, batch, key)[0]
          ),
          (d_params, g_params),
      ),
      "G loss and gradient": (
          jax.grad(lambda g, d: objective.generator_loss(g, d, batch, key)[0]),
          (g_params, d_params),
      ),
  }


def bench_profile(config, matmul: float) -> dict:
  """Where the train step's time goes: FLOPs, seconds and utilisation of its parts
  (each compiled alone, so the parts overlap less than in the fused step)."""
  with _cpu_counting():
    unrolled = _profile_parts(_unrolled(config))
  out = {}
  for name, (fn, args) in _profile_parts(config).items():
    compiled = jax.jit(fn).lower(*args).compile()
    run = functools.partial(
        lambda c, a: jax.block_until_ready(c(*a)), compiled, args
    )
    run()
    seconds = _median_time(run, FLAGS.repeats)
    u_fn, u_args = unrolled[name]
    with _cpu_counting():
      flops = _flops(jax.jit(u_fn).lower(*u_args).compile())
    out[name] = dict(
        ms=1e3 * seconds,
        gflops=flops / 1e9,
        utilisation=flops / seconds / matmul,
    )
  return out


# Instructions whose trace events enclose other instructions' events.
_CONTAINERS = ("while", "call", "conditional")


def _instructions(hlo: str) -> dict:
  """HLO instruction name -> (opcode, shape, whether it multiplies matrices:
  a dot or convolution, alone or inside the computation it fuses, op_name)."""
  bodies = {
      m.group(1): m.group(2)
      for m in re.finditer(r"^%?([\w.-]+) [^\n]*\{\n(.*?)^\}", hlo, re.M | re.S)
  }
  out = {}
  for m in re.finditer(
      r"^\s*(?:ROOT )?%([\w.-]+) = (\S+) ([\w-]+)\((.*)$", hlo, re.M
  ):
    name, shape, opcode, rest = m.groups()
    called = re.search(r"calls=%([\w.-]+)", rest)
    body = bodies.get(called.group(1), "") if called else ""
    matmul = opcode in ("dot", "convolution") or bool(
        re.search(r" (dot|convolution)\(", body)
    )
    # A fusion made by XLA (a weight gradient's layout copies, say) may carry
    # no op_name of its own; its body's instructions do.
    op_name = re.search(r'op_name="([^"]*)"', rest) or re.search(
        r'op_name="([^"]*)"', body
    )
    out[name] = (opcode, shape, matmul, op_name.group(1) if op_name else "")
  return out


def op_times(
    hlo: str,
    run: Callable[[], object],
    calls: int = 10,
    keep: str | None = None,
) -> dict:
  """Where a compiled computation's time goes: a ``jax.profiler`` trace of
  ``calls`` calls of ``run()`` (which must block until its work is done), its
  events matched to the instructions of ``hlo``, the computation's text.

  Returns the wall ms per traced call (tracing slows a call down), the summed
  ms per call of the matrix products (dots and convolutions, fused or not)
  and of everything else, and the instructions by time (the thunk executor
  runs independent ones at once, so the parts can add up to more than the
  time of an untraced call). On several cores, an instruction XLA:CPU hands
  to Eigen's thread pool (the text encoder's convolutions) is timed only
  for its dispatch: 0.05 ms for one that takes 5 ms on one core. ``keep``:
  a path to copy the raw trace (``.trace.json.gz``) to.
  """
  ops = _instructions(hlo)
  run()
  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(calls):
        run()
    traced = time.perf_counter() - start
    paths = glob.glob(
        os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True
    )
    if not paths:
      raise RuntimeError(f"jax.profiler wrote no trace under {logdir}")
    if keep:
      shutil.copyfile(paths[0], keep)
    with gzip.open(paths[0]) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  ms, unmatched = attribute(events, ops, calls)
  top = [
      dict(name=n, ms=t, shape=ops[n][1], matmul=ops[n][2], op=ops[n][3])
      for n, t in ms.most_common()
  ]
  return dict(
      traced_ms=1e3 * traced / calls,
      matmul_ms=sum(o["ms"] for o in top if o["matmul"]),
      other_ms=sum(o["ms"] for o in top if not o["matmul"]),
      top=top,
      unmatched_ms=sum(unmatched.values()),
      unmatched=[dict(name=n, ms=t) for n, t in unmatched.most_common(12)],
  )


def attribute(
    events: list[dict], ops: dict, calls: int
) -> tuple[collections.Counter, collections.Counter]:
  """A trace's complete events (``ph`` X) as ms per call: (by instruction of
  ``ops``, as ``_instructions`` gives them; by event name, for events on a
  device that name no instruction).

  On CPU an event is named by its instruction. A GPU kernel's event names
  the kernel and gives the instruction as ``hlo_op``; where there are such
  events, only the events of their processes (the devices') count, not the
  host's launches beside them, and a device event without a known
  instruction (a kernel XLA launched inside a CUDA graph, say) is tallied
  under its own name, so that no device time goes unseen. Instructions that
  enclose others (while, call, conditional) are left out: their events
  span their bodies'.
  """
  timed = [e for e in events if e.get("ph") == "X"]
  op_of = lambda e: (e.get("args") or {}).get("hlo_op")
  devices = {e.get("pid") for e in timed if op_of(e) in ops}
  by_op, unmatched = collections.Counter(), collections.Counter()
  for e in timed:
    if devices and e.get("pid") not in devices:
      continue
    name = op_of(e) if devices else e.get("name")
    ms = e["dur"] / 1e3 / calls
    if name in ops:
      if ops[name][0] not in _CONTAINERS:
        by_op[name] += ms
    elif devices:
      unmatched[e.get("name")] += ms
  return by_op, unmatched


def bench_ops(config, top: int) -> dict:
  """Per-instruction profiles of the train step and of ``sample`` at batch 64."""
  step, state, batch, _ = _train_setup(config, jax.devices()[:1])
  compiled = step.lower(state, batch).compile()
  train_step, _ = _chain(compiled, state, batch)
  sampler, args = _sampling_case(config, 64)
  sampler = jax.jit(sampler).lower(*args).compile()
  out = {
      "train step": op_times(compiled.as_text(), train_step),
      "sample, batch 64": op_times(
          sampler.as_text(), lambda: sampler(*args).block_until_ready()
      ),
  }
  for profile in out.values():
    profile["top"] = profile["top"][:top]
  return out


_PRODUCTS = ("dot_general", "conv_general_dilated")


def matrix_products(jaxpr: jcore.Jaxpr) -> dict:
  """Every dot and convolution that ``jaxpr`` runs, also inside the jaxprs it
  calls, as key -> [equation, how many times it runs, its name]; equal
  products (same primitive, operand shapes and dtypes, parameters) share a
  key, which keeps the equation and name of one of them. Products whose
  results nothing uses are left out, as XLA leaves them out. A scan's body
  counts ``length`` times; a product inside a while loop or a cond raises a
  ValueError, since how often it runs is known only at run time."""
  out = {}
  _live_products(jaxpr, [True] * len(jaxpr.outvars), 1, "", out)
  return out


def _live_products(
    jaxpr: jcore.Jaxpr,
    live_outputs: list[bool],
    repeat: int,
    scope: str,
    out: dict,
) -> list[bool]:
  """Adds the products of ``jaxpr`` that its live outputs need to ``out`` as
  key -> [equation, count, name: ``scope`` and the equation's name stack];
  returns which of its inputs those outputs read."""
  live = {
      v
      for v, used in zip(jaxpr.outvars, live_outputs)
      if used and isinstance(v, jcore.Var)
  }
  for eqn in reversed(jaxpr.eqns):
    used = [v in live for v in eqn.outvars]
    if not any(used) and not eqn.effects:
      continue
    primitive = eqn.primitive.name
    # A called jaxpr's names are relative to its caller's.
    name_stack = "/".join(
        n for n in (scope, str(eqn.source_info.name_stack)) if n
    )
    if primitive in _PRODUCTS:
      key = (
          primitive,
          tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars),
          repr(sorted(eqn.params.items())),
      )
      out.setdefault(key, [eqn, 0, name_stack])[1] += repeat
    reads = [True] * len(eqn.invars)
    subs = [
        sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        for value in eqn.params.values()
        for sub in (value if isinstance(value, (list, tuple)) else [value])
        if isinstance(sub, (jcore.ClosedJaxpr, jcore.Jaxpr))
    ]
    for sub in subs:
      if primitive in ("while", "cond"):
        if matrix_products(sub):
          raise ValueError(
              f"a {primitive} runs matrix products a number of times known only "
              "at run time"
          )
      elif (
          primitive != "scan"
          and len(subs) == 1
          and len(sub.outvars) == len(eqn.outvars)
          and len(sub.invars) == len(eqn.invars)
      ):
        # A call (jit, remat, custom derivatives): its outputs are the equation's.
        reads = _live_products(sub, used, repeat, name_stack, out)
      else:
        _live_products(
            sub,
            [True] * len(sub.outvars),
            repeat * eqn.params["length"] if primitive == "scan" else repeat,
            name_stack,
            out,
        )
    live.update(
        v for v, r in zip(eqn.invars, reads) if r and isinstance(v, jcore.Var)
    )
  return [v in live for v in jaxpr.invars]


def _product_fn(eqn):
  """A function that runs the product of ``eqn`` alone."""
  return lambda *args: eqn.primitive.bind(*args, **eqn.params)


def product_times(jaxpr: jcore.Jaxpr, matmul: float, calls: int = 10) -> dict:
  """The matrix products of ``jaxpr`` (``matrix_products``), each compiled and
  timed alone: their summed seconds and FLOPs, and their utilisation. That
  is about the most the whole computation can reach, were all its other work
  free (an estimate, not a bound: inside the whole, XLA may lay out or fuse a
  product differently). FLOPs are XLA:CPU's count, as elsewhere.

  Returns ms and GFLOP summed over every run of every product, utilisation,
  how many products run and how many differ, and the products by time.
  """
  rows = []
  for i, (eqn, count, name) in enumerate(matrix_products(jaxpr).values()):
    fn = _product_fn(eqn)
    avals = [
        jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars
    ]
    args = [
        jax.random.normal(jax.random.key(i), a.shape, a.dtype) for a in avals
    ]
    compiled = jax.jit(fn).lower(*args).compile()
    if jax.default_backend() == "cpu":
      flops = _flops(compiled)
    else:
      with _cpu_counting():
        flops = _flops(jax.jit(fn).lower(*avals).compile())

    def run(compiled=compiled, args=args):
      for _ in range(
          calls
      ):  # dispatched without waiting, so dispatch overlaps the work
        out = compiled(*args)
      out.block_until_ready()

    run()
    seconds = _median_time(run, FLAGS.repeats) / calls
    rows.append(
        dict(
            ms=1e3 * seconds * count,
            gflops=flops * count / 1e9,
            count=count,
            utilisation=flops / seconds / matmul,
            primitive=eqn.primitive.name,
            shapes=[list(a.shape) for a in avals],
            op=name,
        )
    )
  rows.sort(key=lambda r: -r["ms"])
  ms, gflops = sum(r["ms"] for r in rows), sum(r["gflops"] for r in rows)
  return dict(
      ms=ms,
      gflops=gflops,
      utilisation=gflops * 1e9 / (ms / 1e3) / matmul,
      products=sum(r["count"] for r in rows),
      distinct=len(rows),
      top=rows,
  )


def bench_products(config, matmul: float, top: int) -> dict:
  """``product_times`` of ``sample`` at batch 64 and of the train step, each
  beside the whole computation's time, measured the same way."""
  sampler, args = _sampling_case(config, 64)
  compiled, calls = jax.jit(sampler).lower(*args).compile(), 4

  def sample_calls():
    for _ in range(calls):
      out = compiled(*args)
    out.block_until_ready()

  sample_calls()
  out = {
      "sample, batch 64": dict(
          product_times(jax.make_jaxpr(sampler)(*args).jaxpr, matmul),
          whole_ms=1e3 * _median_time(sample_calls, FLAGS.repeats) / calls,
      )
  }
  step, state, batch, _ = _train_setup(config, jax.devices()[:1])
  jaxpr = jax.make_jaxpr(step)(state, batch).jaxpr
  seconds, _ = _time_steps(
      step.lower(state, batch).compile(),
      state,
      batch,
      FLAGS.steps,
      FLAGS.repeats,
  )
  out["train step"] = dict(product_times(jaxpr, matmul), whole_ms=1e3 * seconds)
  for profile in out.values():
    profile["top"] = profile["top"][:top]
  return out


def bench_compile(config, depths: list[int]) -> dict:
  """Seconds to trace, lower and compile the train step at each Transformer depth."""
  seconds = []
  # The first compile in a process also pays one-time costs: a warm-up compile
  # keeps them out of the shallowest depth's time (and so out of the ratio).
  for depth in [depths[0]] + list(depths):
    c = config.copy_and_resolve_references()
    c.model.generator.depth = depth
    c.model.text.depth = depth
    step, state, batch, _ = _train_setup(c, jax.devices()[:1], abstract=True)
    start = time.perf_counter()
    step.lower(state, batch).compile()
    seconds.append(time.perf_counter() - start)
    print(f"  compile at depth {depth}: {seconds[-1]:.1f} s", flush=True)
  return dict(zip(depths, seconds[1:]))


def _sampling_case(config, batch: int):
  """(sampler, args): ``sample`` with ``config``'s generator as a function of
  (params, ids, mask, key), and those arguments for ``batch`` copies of one
  caption."""
  m = config.model
  generator, params, ids, mask = _sample_setup(config)
  sampler = functools.partial(sample, generator, z_dim=m.z_dim, ca_dim=m.ca_dim)
  return sampler, (
      params,
      ids.repeat(batch, 0),
      mask.repeat(batch, 0),
      jax.random.key(0),
  )


def _sample_setup(config, init=jax.jit):
  """(generator, its parameters made by ``init(generator.init)``, one caption's ids
  and mask [1, L]) for the sampling sections."""
  m = config.model
  generator, _ = build_models(m, config.data.resolution)
  ids, mask = ByteTokenizer(m.text.max_length).encode(
      ["a small red circle on the left"]
  )
  z, eps = noise.latents(jax.random.key(0), [0], m.z_dim, m.ca_dim)
  return (
      generator,
      init(generator.init)(jax.random.key(0), ids, mask, z, eps),
      ids,
      mask,
  )


def bench_sample(config, batches: list[int], matmul: float) -> dict:
  """Images/s of the jitted ``sample`` per batch size, one image's latency, utilisation."""
  m = config.model
  generator, params, ids, mask = _sample_setup(config)
  unrolled, u_params, _, _ = _sample_setup(
      _unrolled(config), lambda f: functools.partial(jax.eval_shape, f)
  )
  out = {"sample_images_per_s": {}, "sample_utilisation": {}}
  for b in batches:
    bi, bm = ids.repeat(b, 0), mask.repeat(b, 0)
    kwargs = dict(z_dim=m.z_dim, ca_dim=m.ca_dim)
    compiled = sample.lower(
        generator, params, bi, bm, jax.random.key(0), **kwargs
    ).compile()
    # A repeat draws at least 256 images: one call is too short to time.
    calls = max(1, 256 // b)

    def run(compiled=compiled, bi=bi, bm=bm, calls=calls):
      for _ in range(calls):
        out = compiled(params, bi, bm, jax.random.key(0))
      out.block_until_ready()

    run()
    seconds = _median_time(run, max(FLAGS.repeats, 10)) / calls
    with _cpu_counting():
      flops = _flops(
          sample.lower(
              unrolled, u_params, bi, bm, jax.random.key(0), **kwargs
          ).compile()
      )
    out["sample_images_per_s"][b] = b / seconds
    out["sample_utilisation"][b] = flops / seconds / matmul
    if b == 1:
      out["sample_latency_s"] = seconds
  return out


def bench_serve(config, clients: int = 16, per_client: int = 16) -> dict:
  """Requests/s of ``dallex.serving`` on the loopback address, each request
  one image: from one client at a time, then from ``clients`` at once
  (random parameters: the time does not depend on them). Every batch size
  compiles first."""
  import http.client
  import threading
  from concurrent.futures import ThreadPoolExecutor

  from dallex import serving
  from dallex.sampling import Sampler

  generator, params, _, _ = _sample_setup(config)
  batcher = serving.Batcher(
      Sampler(config, generator, params, 0),
      max_batch=64,
      queue_size=4 * clients,
  ).start()
  server = serving.make_server(batcher, port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  body = json.dumps({"prompt": "a small red circle on the left", "num": 1})

  def request(_=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=600)
    conn.request("POST", "/api/generate", body.encode())
    status = conn.getresponse().status
    conn.close()
    return status

  def requests_per_s(n, workers):
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
      statuses = list(pool.map(request, range(n)))
    if set(statuses) != {200}:
      raise RuntimeError(f"serve benchmark: answers {sorted(set(statuses))}")
    return n / (time.perf_counter() - start)

  try:
    for rows in (1, 2, 4, 8, 16, 32, 64):  # compile each batch size once
      batcher.submit(serving.Request("a", num=rows)).result()
    one = requests_per_s(per_client, 1)
    many = requests_per_s(per_client * clients, clients)
  finally:
    server.shutdown()
    server.server_close()
    batcher.stop()
  return {
      "serve_requests_per_s": {"1 client": one, f"{clients} clients": many},
      "serve_ratio": many / one,
  }


def bench_input(config, batches: int = 100) -> dict:
  """Batches/s of the input pipeline alone (the training config's settings)."""
  source = sources.open_source(config.data, config.data.train_split)
  it = iter(
      pipeline.make_dataset(
          source,
          batch_size=config.train.batch_size,
          resolution=config.data.resolution,
          max_length=config.model.text.max_length,
          seed=0,
          num_threads=config.data.num_threads,
          prefetch=config.data.prefetch,
          num_workers=config.data.num_workers,
      )
  )
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return {"input_batches_per_s": batches / seconds}


def bench_devices_here(config, counts: list[int]) -> dict:
  """Images/s of the train step data-parallel over the first k devices, per k."""
  out = {}
  for k in counts:
    step, state, batch, b = _train_setup(config, jax.devices()[:k])
    state, _ = step(state, batch)  # compiles; the old state is donated
    seconds, _ = _time_steps(
        step, state, batch, max(2, FLAGS.steps // 2), FLAGS.repeats
    )
    out[k] = b / seconds
  return out


def bench_devices(counts: list[int]) -> dict:
  """Runs the scaling section in a fresh process with host-platform (CPU) devices,
  also on a machine with an accelerator."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
      f"{max(counts)}"
  ).strip()
  args = [a for a in sys.argv[1:] if not a.startswith(("--out", "--only"))]
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.benchmark",
          "--devices_worker",
          *args,
      ],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  if out.returncode:
    raise RuntimeError("the devices section failed:\n" + out.stderr[-3000:])
  return {
      int(k): v
      for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()
  }


def _print_table(results: dict) -> None:
  def line(name, value, unit=""):
    print(f"  {name:<34} {value}{unit}")

  print("dallex benchmark:", results["device"], "|", results["config"])
  for key, value in results.items():
    if key == "ops":
      _print_ops(value)
    elif key == "products":
      _print_products(value)
    elif isinstance(value, dict):
      print(f"  {key}:")
      for k, v in value.items():
        if isinstance(v, dict):
          v = ", ".join(
              f"{n} {x:.4g}" if isinstance(x, float) else f"{n} {x}"
              for n, x in v.items()
          )
        line(f"  {k}", f"{v:.4g}" if isinstance(v, float) else v)
    elif isinstance(value, float):
      line(key, f"{value:.4g}")


def _print_ops(profiles: dict) -> None:
  for name, p in profiles.items():
    print(
        f"  where the time goes, {name}: {p['traced_ms']:.1f} ms per traced call; "
        f"matrix products {p['matmul_ms']:.1f} ms, everything else {p['other_ms']:.1f} ms"
    )
    for o in p["top"]:
      kind = "matmul" if o["matmul"] else "other"
      print(
          f"    {o['ms']:7.2f} ms  {kind:<6} {o['shape']:<28} {o['op'][-70:]}"
      )
    for line in unmatched_lines(p):
      print(line)


def unmatched_lines(profile: dict) -> list[str]:
  """The printed lines of ``op_times``' device events that name no
  instruction (none where there are none)."""
  if not profile.get("unmatched"):
    return []
  return [
      f"  device events naming no instruction: {profile['unmatched_ms']:.2f} ms"
  ] + [
      f"    {o['ms']:8.3f} ms  {o['name'][-80:]}" for o in profile["unmatched"]
  ]


def _print_products(profiles: dict) -> None:
  for name, p in profiles.items():
    print(
        f"  matrix products alone, {name}: {p['products']} ({p['distinct']} different), "
        f"{p['ms']:.1f} ms for {p['gflops']:.2f} GFLOP, utilisation {p['utilisation']:.3f}; "
        f"the whole {p['whole_ms']:.1f} ms"
    )
    for o in p["top"]:
      shapes = " ".join("x".join(map(str, s)) for s in o["shapes"])
      print(
          f"    {o['ms']:7.2f} ms  {o['utilisation']:5.2f}  x{o['count']:<3} {shapes:<26} "
          f"{o['op'][-60:]}"
      )


def _write(results: dict, path: str | None) -> None:
  """Writes ``results`` as JSON to ``path`` (if given) through a temporary file,
  so the file always holds a whole result."""
  if path:
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)


def _use_cores(count: int) -> None:
  """Pins this process (and the ones it starts) to its first ``count`` CPU cores.
  Must run before JAX's first computation, which sizes XLA's thread pools."""
  available = (
      sorted(os.sched_getaffinity(0))
      if hasattr(os, "sched_getaffinity")
      else []
  )
  if not available:
    raise ValueError(
        "--cores needs os.sched_setaffinity, which this platform lacks"
    )
  if not 1 <= count <= len(available):
    raise ValueError(
        f"--cores must be between 1 and the {len(available)} cores this process "
        f"may use, got {count}"
    )
  os.sched_setaffinity(0, available[:count])


def _cores() -> int:
  """The CPU cores this process may run on."""
  return (
      len(os.sched_getaffinity(0))
      if hasattr(os, "sched_getaffinity")
      else os.cpu_count()
  )


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  if FLAGS.cores is not None:
    _use_cores(FLAGS.cores)
  config = FLAGS.config
  if FLAGS.devices_worker:
    counts = [int(x) for x in FLAGS.devices.split(",")]
    print(json.dumps(bench_devices_here(config, counts)))
    return
  sections = set(FLAGS.only.split(","))
  dtype = compute_dtype(config.model.dtype)
  results = {
      "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), "
      f"{_cores()} CPU cores",
      "config": config.model.dtype
      + " "
      + config.data.name
      + f" r{config.data.resolution} batch "
      + str(config.train.batch_size),
  }
  results["matmul_flops_per_s"] = matmul_flops_per_s(dtype)
  # Written after every section, so a run cut short keeps what it measured.
  write = functools.partial(_write, results, FLAGS.out)
  # Sampling first: after the other sections, in the same process, it measured
  # up to 19% slower than alone.
  if "sample" in sections:
    results.update(
        bench_sample(
            config,
            [int(x) for x in FLAGS.sample_batches.split(",")],
            results["matmul_flops_per_s"],
        )
    )
    write()
  if "serve" in sections:
    results.update(bench_serve(config))
    write()
  if "train" in sections:
    results.update(bench_train(config, results["matmul_flops_per_s"]))
    write()
  if "profile" in sections:
    results["profile"] = bench_profile(config, results["matmul_flops_per_s"])
    write()
  if "ops" in sections:
    results["ops"] = bench_ops(config, FLAGS.top_ops)
    write()
  if "products" in sections:
    results["products"] = bench_products(
        config, results["matmul_flops_per_s"], FLAGS.top_ops
    )
    write()
  if "compile" in sections:
    depths = [int(x) for x in FLAGS.depths.split(",")]
    results["compile_seconds"] = bench_compile(config, depths)
    results["compile_ratio_deepest_to_shallowest"] = (
        results["compile_seconds"][depths[-1]]
        / results["compile_seconds"][depths[0]]
    )
    write()
  if "input" in sections:
    results.update(bench_input(config))
    if "train_steps_per_s" in results:
      results["input_to_train_ratio"] = (
          results["input_batches_per_s"] / results["train_steps_per_s"]
      )
    write()
  if "devices" in sections:
    results["devices_images_per_s"] = bench_devices(
        [int(x) for x in FLAGS.devices.split(",")]
    )
    write()
  _print_table(results)
  if FLAGS.out:
    print(f"-> {FLAGS.out}")


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
