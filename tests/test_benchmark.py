"""The benchmark's arithmetic: FLOPs counted over every Transformer block, and
utilisation as the step's FLOP rate over the machine's matmul rate.

Run in a subprocess: experiments/benchmark.py defines absl flags that other
experiment scripts imported by the suite define too.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

_PROBE = """
import json, sys
import jax
from absl import flags
sys.path.insert(0, "tests")
from conftest import tiny_config
from experiments import benchmark
flags.FLAGS(["benchmark", "--steps=2", "--repeats=1"])
config = tiny_config()
config.train.batch_size = 4
out = benchmark.bench_train(config, matmul=1e9)
step, state, batch, _ = benchmark._train_setup(config, jax.devices()[:1])
out["scanned_step_flops"] = benchmark._flops(step.lower(state, batch).compile())
print(json.dumps(out))
"""


def test_train_flops_count_every_scanned_block_and_utilisation_is_their_rate_over_the_limit():
  run = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["train_utilisation"] == pytest.approx(out["train_flops_per_s"] / 1e9, rel=1e-9)
  assert out["train_images_per_s"] == pytest.approx(4 * out["train_steps_per_s"], rel=1e-6)
  assert out["train_memory_bytes"]["peak_estimate"] > 0
  # XLA's cost analysis counts the body of a scan once, so the scanned step's
  # own count misses a block of each two-block stack; the benchmark's does not.
  assert out["train_step_flops"] > out["scanned_step_flops"] > 0


_OPS_PROBE = """
import json
import jax, jax.numpy as jnp
from experiments import benchmark
# A sort: work no matmul library fuses (XLA:CPU of jax 0.11 fuses elementwise
# consumers into the dot's library call).
f = jax.jit(lambda x, w, v: (x @ w, jnp.sort(v, axis=-1)))
x, w = jnp.ones((512, 256)), jnp.ones((256, 512))
v = jax.random.normal(jax.random.key(0), (256, 4096))
compiled = f.lower(x, w, v).compile()
out = benchmark.op_times(compiled.as_text(),
                         lambda: jax.block_until_ready(compiled(x, w, v)), calls=3)
print(json.dumps(out))
"""


def test_op_profile_splits_a_computation_into_its_matmul_and_its_other_work():
  run = subprocess.run([sys.executable, "-c", _OPS_PROBE], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  kinds = {o["matmul"] for o in out["top"]}
  assert kinds == {True, False}, out["top"]
  assert [o["ms"] for o in out["top"]] == sorted((o["ms"] for o in out["top"]), reverse=True)
  assert out["matmul_ms"] == pytest.approx(sum(o["ms"] for o in out["top"] if o["matmul"]))
  assert all(o["ms"] > 0 for o in out["top"])
  assert any("dot_general" in o["op"] for o in out["top"] if o["matmul"])


_CORES_PROBE = """
import json, os, subprocess, sys
from experiments import benchmark
before = len(os.sched_getaffinity(0))
errors = []
for bad in (0, before + 1):
  try:
    benchmark._use_cores(bad)
  except ValueError as e:
    errors.append(str(e))
benchmark._use_cores(1)
child = subprocess.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout
print(json.dumps(dict(before=before, after=benchmark._cores(), child=int(child), errors=errors)))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_cores_pins_the_process_and_its_children_and_rejects_counts_it_lacks():
  run = subprocess.run([sys.executable, "-c", _CORES_PROBE], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["after"] == out["child"] == 1
  assert len(out["errors"]) == 2 and all("--cores" in e for e in out["errors"]), out["errors"]
  assert str(out["before"]) in out["errors"][1]
