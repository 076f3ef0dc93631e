"""The device check at tiny sizes on CPU: every section runs, the utilisation
is the step's FLOP rate over the better matmul rate, each target's verdict
follows from its value, a missed target brings the step's profile, and a
profiler that fails costs the profile, not the measurements.

Run in a subprocess: experiments/device_check.py defines absl flags that other
experiment scripts imported by the suite define too. Both configs are the
article's model at tiny sizes: what is checked here is the check, not the
model, and that model traces and compiles in a fraction of the time.
"""

import json

import pytest

from conftest import run_python

_PROBE = """
import json, sys
from absl import flags
sys.path.insert(0, "tests")
from conftest import tiny_config
from experiments import benchmark, device_check
flags.FLAGS(["device_check", "--steps=2", "--repeats=1"])
# The second profile (the loop's step) fails, as on a machine without one.
profiled, op_times = [], benchmark.op_times
def flaky_op_times(*args, **kwargs):
  profiled.append(1)
  if len(profiled) == 2:
    raise RuntimeError("no profiler on this machine")
  return op_times(*args, **kwargs)
benchmark.op_times = flaky_op_times
accel = tiny_config("seed", resolution=8)
accel.model.dtype = "bfloat16"
accel.train.batch_size = 8
config = tiny_config("seed", resolution=8)
config.data.update(name="caption_folder", path=sys.argv[1], data_dir=sys.argv[2])
config.train.batch_size = 8
results = device_check.check(
    accel, config, 20, sys.argv[3], top=5, matmul_sizes=(256,),
    traces=sys.argv[4],
)
print(device_check.table(results))
print(json.dumps(results))
"""


def test_the_device_check_measures_every_target_and_profiles_a_missed_one(
    tmp_path, small_folder
):
  work = tmp_path / "work"
  work.mkdir()
  out = run_python(
      "-c",
      _PROBE,
      str(small_folder),
      str(tmp_path / "data"),
      str(work),
      str(tmp_path / "check"),
      check=True,
  )
  printed, last = out.stdout.strip().rsplit("\n", 1)
  results = json.loads(last)
  a, lp = results["accel"], results["loop"]
  best = max(results["matmul_flops_per_s"].values())
  assert a["mfu"] == pytest.approx(a["step_flops"] * a["steps_per_s"] / best)
  assert a["step_flops"] > 0 and a["compile_s"] > 0 and a["batch"] == 8
  assert lp["steps_per_s"] > 0 and 0.0 <= lp["host_share"] <= 1.0
  assert lp["step_alone_steps_per_s"] > 0
  bounds = {
      "accelerator config: model FLOPs utilisation": (a["mfu"], ">=", 0.35),
      "accelerator config: compile seconds": (a["compile_s"], "<", 60),
      "loop: steps/s": (lp["steps_per_s"], ">=", 240),
      "loop: host share of the time": (lp["host_share"], "<", 0.10),
  }
  assert {t["name"] for t in results["targets"]} == set(bounds)
  for t in results["targets"]:
    value, op, bound = bounds[t["name"]]
    assert t["met"] == (value >= bound if op == ">=" else value < bound)
    assert t["name"] in printed
    assert ("met" if t["met"] else "MISSED") in printed.split(t["name"])[1]
  # A tiny bfloat16 model on CPU is far from the utilisation target; its
  # step's profile says where the time went.
  assert not results["targets"][0]["met"]
  assert 0 < len(a["profile"]["top"]) <= 5 and a["profile"]["matmul_ms"] > 0
  assert "where the time goes, the accelerator config's step" in printed
  assert lp["profile"] == {
      "error": "RuntimeError: no profiler on this machine",
      "top": [],
  }
  loop_missed = not all(t["met"] for t in results["targets"][2:])
  assert (
      "no profile of the loop's step: RuntimeError: no profiler on this machine"
      in printed
  ) == loop_missed
  # The accelerator step's raw trace is kept; the failed one left none.
  assert (tmp_path / "check.accel.trace.json.gz").stat().st_size > 0
  assert not (tmp_path / "check.loop.trace.json.gz").exists()
  # Each part was shown as soon as it was measured.
  for part in ("matmul_flops_per_s", "accel step", "accel", "loop"):
    assert f"device check, {part}: " in out.stderr
