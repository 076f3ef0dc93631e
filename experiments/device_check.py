r"""The accelerator check: one run that prints where dallex stands on a GPU or TPU.

    python -m experiments.device_check --config.model.dtype=bfloat16 \
        --config.train.batch_size=32 [--out check.json]

Meant to take under 8 minutes on one accelerator (it runs on CPU too, slowly
at these sizes; the tests run it with tiny configs). It prints one table:

* the device's dense matmul rate in bfloat16 and in float32;
* the accelerator config (``--accel_config``, default ``shapes64_accel``) at
  its batch: compile time, steps/s and model FLOPs utilisation: the step's
  FLOPs, counted as the benchmark counts them (XLA:CPU's cost analysis of the
  step in XLA's own forms, the same on every backend), per second, over the
  better of the two matmul rates;
* ``--config`` (default ``shapes32``; above in bfloat16 and at the batch of
  32 the loop's target is set for, as docs/performance.md's H200 numbers
  were measured) in the training loop with the device cache: the loop's
  steps/s and the host's share of its time (``host_share`` in
  metrics.jsonl), beside the step alone;
* each against its target, and where one is missed, the step's largest
  operations from a profile (``--out`` holds both steps' profiles, and their
  raw traces lie beside it, for reading in Perfetto).
"""

import json
import os
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dallex import hugepages, loop
from dallex.models import compute_dtype
from experiments import benchmark

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
config_flags.DEFINE_config_file(
    "accel_config",
    os.path.join(_CONFIGS, "shapes64_accel.py"),
    "The accelerator config whose step is measured.",
    lock_config=True,
)
flags.DEFINE_integer(
    "loop_steps",
    3000,
    "Steps of the training loop (--config) to time.",
    lower_bound=20,
)
FLAGS = flags.FLAGS

# The targets the accelerators issue sets, on one H200 or its equal.
MFU_TARGET = 0.35
COMPILE_TARGET_S = 60.0
LOOP_TARGET_STEPS_PER_S = 5 * 48.0  # 5x what two reader threads fed
HOST_SHARE_TARGET = 0.10


def matmul_rates(sizes: tuple[int, ...] | None = None) -> dict:
  """The dense matmul rate in bfloat16 and float32 (FLOP/s), over square
  matrices of ``sizes`` (default: the benchmark's for this backend)."""
  return {
      name: benchmark.matmul_flops_per_s(compute_dtype(name), sizes)
      for name in ("bfloat16", "float32")
  }


def _step(config, top: int, trace: str | None = None) -> dict:
  """``config``'s train step on one device as the benchmark builds it,
  compiled once: compile seconds, steps/s and a profile of its ``top``
  largest operations (its raw trace copied to ``trace``, if given)."""
  step, state, batch, _ = benchmark._train_setup(config, jax.devices()[:1])
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  seconds, state = benchmark._time_steps(
      compiled, state, batch, FLAGS.steps, FLAGS.repeats
  )
  run, _ = benchmark._chain(compiled, state, batch)
  try:
    profile = benchmark.op_times(compiled.as_text(), run, keep=trace)
  except Exception as e:
    # A profiler the machine lacks (no CUPTI, say) must not lose the timings
    # above: the table says why there is no profile.
    profile = dict(error=f"{type(e).__name__}: {e}", top=[])
  profile["top"] = profile["top"][:top]
  return dict(compile_s=compile_s, steps_per_s=1.0 / seconds, profile=profile)


def accel_step(
    config, best_matmul: float, top: int, trace: str | None = None
) -> dict:
  """Compile time, steps/s, FLOPs, utilisation and profile of ``config``'s
  train step."""
  out = _step(config, top, trace)
  out["batch"] = config.train.batch_size
  _progress("accel step", out)
  out["step_flops"] = benchmark.step_flops(config)
  out["mfu"] = out["step_flops"] * out["steps_per_s"] / best_matmul
  return out


def training_loop(
    config, steps: int, workdir: str, top: int, trace: str | None = None
) -> dict:
  """``config`` trained for ``steps`` in the loop with the device cache (no
  samples, evaluations or checkpoints but the last): the median over the
  logged windows after the first (which holds compiling) of steps/s and of
  the host's share; and the step alone, with its profile."""
  config = config.copy_and_resolve_references()
  config.data.cache = "device"
  config.evals.every = 0
  config.train.update(
      steps=steps, log_every=steps // 10, sample_every=0, checkpoint_every=0
  )
  start = time.perf_counter()
  loop.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "steps_per_s" in r][1:]
  alone = _step(config, top, trace)
  return {
      "batch": config.train.batch_size,
      "steps_per_s": statistics.median(r["steps_per_s"] for r in rows),
      "host_share": statistics.median(r["host_share"] for r in rows),
      "step_alone_steps_per_s": alone["steps_per_s"],
      "profile": alone["profile"],
      "wall_s": wall,
  }


def targets(results: dict) -> list[dict]:
  """Each target with its measured value and whether it is met."""
  a, lp = results["accel"], results["loop"]
  rows = [
      (
          "accelerator config: model FLOPs utilisation",
          a["mfu"],
          ">=",
          MFU_TARGET,
      ),
      (
          "accelerator config: compile seconds",
          a["compile_s"],
          "<",
          COMPILE_TARGET_S,
      ),
      ("loop: steps/s", lp["steps_per_s"], ">=", LOOP_TARGET_STEPS_PER_S),
      (
          "loop: host share of the time",
          lp["host_share"],
          "<",
          HOST_SHARE_TARGET,
      ),
  ]
  return [
      dict(
          name=name,
          value=value,
          target=f"{op} {bound:g}",
          met=value >= bound if op == ">=" else value < bound,
      )
      for name, value, op, bound in rows
  ]


def check(
    accel_config,
    loop_config,
    loop_steps: int,
    workdir: str,
    top: int = 12,
    matmul_sizes: tuple[int, ...] | None = None,
    traces: str | None = None,
) -> dict:
  """Everything the table shows, as a dict (what ``--out`` writes). With
  ``traces``, the two steps' raw profiler traces are kept beside it as
  ``{traces}.accel.trace.json.gz`` and ``{traces}.loop.trace.json.gz``."""
  trace = lambda part: f"{traces}.{part}.trace.json.gz" if traces else None
  rates = matmul_rates(matmul_sizes)
  results = {
      "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), "
      f"jax {jax.__version__}",
      "date": time.strftime("%Y-%m-%d"),
      "matmul_flops_per_s": rates,
  }
  _progress("matmul_flops_per_s", rates)
  results["accel"] = accel_step(
      accel_config, max(rates.values()), top, trace("accel")
  )
  _progress("accel", results["accel"])
  results["loop"] = training_loop(
      loop_config, loop_steps, workdir, top, trace("loop")
  )
  _progress("loop", results["loop"])
  results["targets"] = targets(results)
  return results


def _progress(name: str, part: dict) -> None:
  """Prints a measured part at once (to stderr, without its profile), so a
  run that a lease's time limit cuts short still shows what it measured."""
  shown = {k: v for k, v in part.items() if k != "profile"}
  print(
      f"device check, {name}: {json.dumps(shown)}", file=sys.stderr, flush=True
  )


def table(results: dict) -> str:
  """The printed form of ``check``'s results."""
  a, lp, r = results["accel"], results["loop"], results["matmul_flops_per_s"]
  lines = [
      f"dallex device check: {results['device']}, {results['date']}",
      f"  dense matmul, bfloat16 / float32: {r['bfloat16'] / 1e12:.4g} / "
      f"{r['float32'] / 1e12:.4g} TFLOP/s",
      f"  accelerator config, batch {a['batch']}: {a['steps_per_s']:.4g} steps/s, "
      f"{a['step_flops'] / 1e12:.4g} TFLOP a step, compiled in {a['compile_s']:.1f} s",
      f"  loop config in the loop, device cache, batch {lp['batch']}: "
      f"{lp['steps_per_s']:.4g} steps/s (the step alone "
      f"{lp['step_alone_steps_per_s']:.4g}), host share {lp['host_share']:.3f}",
      "  targets:",
  ]
  for t in results["targets"]:
    lines.append(
        f"    {t['name']:<46} {t['value']:10.4g}  {t['target']:<8} "
        + ("met" if t["met"] else "MISSED")
    )
  missed = {t["name"].split(":")[0] for t in results["targets"] if not t["met"]}
  for name, part in (("accelerator config", a), ("loop", lp)):
    if name not in missed:
      continue
    p = part["profile"]
    if "error" in p:
      lines.append(f"  no profile of the {name}'s step: {p['error']}")
      continue
    lines.append(
        f"  where the time goes, the {name}'s step: {p['traced_ms']:.2f} ms "
        f"per traced call; matrix products {p['matmul_ms']:.2f} ms, "
        f"everything else {p['other_ms']:.2f} ms"
    )
    for o in p["top"]:
      kind = "matmul" if o["matmul"] else "other"
      lines.append(
          f"    {o['ms']:8.3f} ms  {kind:<6} {o['shape'][:28]:<28} {o['op'][-60:]}"
      )
    lines += benchmark.unmatched_lines(p)
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  with tempfile.TemporaryDirectory() as workdir:
    results = check(
        FLAGS.accel_config,
        FLAGS.config,
        FLAGS.loop_steps,
        workdir,
        FLAGS.top_ops,
        traces=FLAGS.out and os.path.splitext(FLAGS.out)[0],
    )
  benchmark._write(results, FLAGS.out)
  print(table(results))
  if FLAGS.out:
    print(f"-> {FLAGS.out}")


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
