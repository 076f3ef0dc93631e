"""The benchmark's arithmetic: FLOPs counted over every Transformer block,
utilisation as the step's FLOP rate over the machine's matmul rate, the
instruction profile, the matrix products counted and timed one by one, and
the pinning to fewer cores.

Run in a subprocess: experiments/benchmark.py defines absl flags that other
experiment scripts imported by the suite define too.
"""

import json
import os

import pytest

from conftest import run_python


def _probe(code: str) -> dict:
  """Runs ``code`` in a fresh Python and returns the JSON its last line prints."""
  run = run_python("-c", code, check=True)
  return json.loads(run.stdout.strip().splitlines()[-1])


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
step, state, batch, _ = benchmark._train_setup(config, jax.devices()[:1], abstract=True)
out["scanned_step_flops"] = benchmark._flops(step.lower(state, batch).compile())
print(json.dumps(out))
"""


def test_train_flops_count_every_scanned_block_and_utilisation_is_their_rate_over_the_limit():
  out = _probe(_PROBE)
  assert out["train_utilisation"] == pytest.approx(
      out["train_flops_per_s"] / 1e9, rel=1e-9
  )
  assert out["train_images_per_s"] == pytest.approx(
      4 * out["train_steps_per_s"], rel=1e-6
  )
  assert out["train_memory_bytes"]["peak_estimate"] > 0
  # XLA's cost analysis counts the body of a scan once, so the scanned step's
  # own count misses a block of each two-block stack; the benchmark's does not.
  assert out["train_step_flops"] > out["scanned_step_flops"] > 0


_ATTRIBUTE_PROBE = """
import json
from experiments import benchmark
ops = {
    "fusion.1": ("fusion", "f32[8]", False, "jit(f)/add"),
    "custom-call.2": ("custom-call", "f32[8,8]", True, "jit(f)/dot_general"),
    "while.3": ("while", "(s32[])", False, "jit(f)/while"),
}
X = lambda pid, name, dur, **args: dict(ph="X", pid=pid, name=name, dur=dur, args=args)
gpu = [
    dict(ph="M", pid=7, name="process_name", args=dict(name="/device:GPU:0")),
    X(1, "fusion.1", 5000),  # the host's launch, named by its instruction
    X(7, "loop_add_fusion", 2000, hlo_op="fusion.1"),
    X(7, "nvjet_gemm", 3000),  # launched in a CUDA graph: no instruction
    X(7, "nvjet_gemm", 1000),
    X(7, "while_body", 9000, hlo_op="while.3"),
]
cpu = [X(1, "fusion.1", 5000), X(1, "custom-call.2", 1000), X(1, "main", 8000)]
print(json.dumps([benchmark.attribute(t, ops, calls=2) for t in (gpu, cpu)]))
"""


def test_profile_counts_a_gpus_kernels_by_instruction_and_shows_the_rest():
  """A GPU trace: the device's kernels by instruction, not the host's
  launches beside them; the device time that names no instruction listed
  by kernel; a while loop's span left out. A CPU trace: events by name."""
  (gpu, gpu_rest), (cpu, cpu_rest) = _probe(_ATTRIBUTE_PROBE)
  assert gpu == {"fusion.1": 1.0} and gpu_rest == {"nvjet_gemm": 2.0}
  assert cpu == {"fusion.1": 2.5, "custom-call.2": 0.5} and cpu_rest == {}


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
  out = _probe(_OPS_PROBE)
  kinds = {o["matmul"] for o in out["top"]}
  assert kinds == {True, False}, out["top"]
  assert [o["ms"] for o in out["top"]] == sorted(
      (o["ms"] for o in out["top"]), reverse=True
  )
  assert out["matmul_ms"] == pytest.approx(
      sum(o["ms"] for o in out["top"] if o["matmul"])
  )
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


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity"
)
def test_cores_pins_the_process_and_its_children_and_rejects_counts_it_lacks():
  out = _probe(_CORES_PROBE)
  assert out["after"] == out["child"] == 1
  assert len(out["errors"]) == 2 and all(
      "--cores" in e for e in out["errors"]
  ), out["errors"]
  assert str(out["before"]) in out["errors"][1]


_PRODUCTS_PROBE = """
import json
import jax, jax.numpy as jnp
from absl import flags
from experiments import benchmark
flags.FLAGS(["benchmark", "--repeats=1"])

def f(x, w, k):
  y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)
  image = jax.lax.conv_general_dilated(y.reshape(1, 8, 8, 16), k, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # The same product as the scan's, in a call whose second output nothing uses.
  used, _ = jax.jit(lambda a: (a @ w, (a @ w.T) @ w))(y)
  return used, image

x, w, k = jnp.ones((64, 16)), jnp.ones((16, 16)), jnp.ones((3, 3, 16, 4))
out = benchmark.product_times(jax.make_jaxpr(f)(x, w, k).jaxpr, matmul=1e9, calls=2)
errors = []
for g in (lambda n, a: jax.lax.fori_loop(0, n, lambda i, c: c @ a, a),
          lambda n, a: jax.lax.cond(n > 0, lambda: a @ a, lambda: a)):
  try:
    benchmark.matrix_products(jax.make_jaxpr(g)(3, w).jaxpr)
  except ValueError as e:
    errors.append(str(e))
out["errors"] = errors
loop = lambda n, a: jax.lax.fori_loop(0, n, lambda i, c: c + 1.0, a)
out["loop_without_products"] = len(benchmark.matrix_products(jax.make_jaxpr(loop)(3, w).jaxpr))
print(json.dumps(out))
"""


def test_products_are_counted_through_scans_and_calls_unless_unused_and_timed_one_by_one():
  out = _probe(_PRODUCTS_PROBE)
  assert (out["products"], out["distinct"]) == (5, 2)
  by_kind = {o["primitive"]: o for o in out["top"]}
  dot, conv = by_kind["dot_general"], by_kind["conv_general_dilated"]
  # The scan's body runs three times and the call's used product once (its
  # unused ones not at all): 4 x 2 * 64 * 16 * 16 FLOPs.
  assert dot["count"] == 4 and dot["gflops"] == pytest.approx(
      4 * 2 * 64 * 16 * 16 / 1e9
  )
  assert conv["count"] == 1 and conv["shapes"] == [[1, 8, 8, 16], [3, 3, 16, 4]]
  assert conv["gflops"] > 0
  assert out["gflops"] == pytest.approx(dot["gflops"] + conv["gflops"])
  assert out["ms"] == pytest.approx(dot["ms"] + conv["ms"]) and out["ms"] > 0
  assert out["utilisation"] == pytest.approx(
      out["gflops"] / out["ms"] * 1e3, rel=1e-9
  )
  assert [o["ms"] for o in out["top"]] == sorted(
      (o["ms"] for o in out["top"]), reverse=True
  )
  # A loop or cond whose trip count or branch is known only at run time.
  assert len(out["errors"]) == 2, out["errors"]
  assert "while" in out["errors"][0] and "cond" in out["errors"][1]
  assert out["loop_without_products"] == 0
