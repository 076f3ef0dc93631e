"""End-to-end runs of `python -m experiments.train` with a tiny config."""

import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dallex import loop
from dallex.checkpoint import Checkpointer

from conftest import ROOT
from conftest import tiny_config
from conftest import train_cli as _train
from conftest import train_cmd as _train_cmd


def _final_params(workdir):
  """The newest checkpoint's state as plain arrays, and its data state."""
  manager = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      item_names=("state", "data", "config"),
      item_handlers={
          "state": ocp.StandardCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler(),
      },
  )
  step = manager.latest_step()
  # Onto this process's first device, whatever devices saved it.
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
      manager.item_metadata(step)["state"],
  )
  out = manager.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
      ),
  )
  return step, jax.tree.map(np.asarray, out["state"]), out["data"]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_dir(full_shapes_r32):
  return str(full_shapes_r32.data_dir_root)


def _events(folder):
  """(step, tag, image (width, height) or None) of every value in the TensorBoard
  event files of ``folder`` (TFRecord framing: length, CRC, event, CRC)."""
  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted(folder.iterdir()):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      n = struct.unpack("<Q", data[i : i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      for value in event.summary.value:
        size = (
            (value.image.width, value.image.height)
            if value.HasField("image")
            else None
        )
        out.append((event.step, value.tag, size))
  return out


def _fails(out, *phrases):
  """The run exited with an error whose stderr holds every phrase."""
  assert out.returncode != 0
  assert all(p in out.stderr for p in phrases), out.stderr[-3000:]


def _train_rows(workdir):
  return [r for r in _metrics(workdir) if "d_loss" in r]


# The tests of the loop's mechanics (signals, time limits, bad steps, a full
# disk, a refused config) train the article's model: at these sizes it
# traces and compiles in a fraction of the time, and nothing they test
# depends on the model. The dallex model's runs are the tiny_run fixture's
# and their resumption.
_seed_train = functools.partial(_train, arch="seed")
_seed_train_cmd = functools.partial(_train_cmd, arch="seed")

# The logged fields that time the loop, which no two runs share.
_TIMES = ("steps_per_s", "host_share")


def test_train_cli_writes_everything_and_resumes_exactly(
    tmp_path, data_dir, tiny_run
):
  """One straight run of 6 steps, checked for every output; then the same run
  resumed from its checkpoint at step 2 must end bit-identical to it."""
  straight, stdout = tiny_run
  resumed = tmp_path / "resumed"
  assert "dallex: step 6/6" in stdout
  assert sorted(os.listdir(straight / "checkpoints"), key=int) == [
      "2",
      "4",
      "6",
  ]
  rows = _train_rows(straight)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert all(
      np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows
  )
  assert all(0.0 <= r["host_share"] <= 1.0 for r in rows)
  evals = [r for r in _metrics(straight) if "d_loss" not in r]
  assert [r["step"] for r in evals] == [3, 6]
  for r in evals:
    assert 0.0 <= r["eval/test/object_accuracy"] <= 1.0
    assert 0.0 <= r["eval/test/r_precision"] <= 1.0
  assert sorted(os.listdir(straight / "samples")) == [
      "step_0000003.png",
      "step_0000006.png",
  ]
  from PIL import Image

  grid = np.asarray(Image.open(straight / "samples" / "step_0000006.png"))
  assert grid.ndim == 3 and grid.shape[0] > 64 and grid.std() > 0
  # TensorBoard holds the scalars of every step and each sample grid as an image.
  events = _events(straight / "events")
  assert {step for step, tag, _ in events if tag == "d_loss"} == {
      1,
      2,
      3,
      4,
      5,
      6,
  }
  images = {step: size for step, tag, size in events if tag == "samples"}
  assert images == {3: grid.shape[1::-1], 6: grid.shape[1::-1]}
  with open(straight / "config.json") as f:
    assert json.load(f)["train"]["steps"] == 6

  # Its checkpoint at step 2 was saved mid-run, with batches read ahead. The
  # resumed run draws no grids and runs no evaluations: both use their own
  # fixed keys, so turning them off changes nothing in training.
  shutil.copytree(straight, resumed)
  for later in ("4", "6"):
    shutil.rmtree(resumed / "checkpoints" / later)
  out = _train(
      resumed,
      data_dir,
      "--config.train.steps=6",
      "--config.train.sample_every=0",
  )
  assert f"resuming from {resumed}/checkpoints/2" in out.stdout
  step_a, state_a, data_a = _final_params(straight)
  step_b, state_b, data_b = _final_params(resumed)
  assert step_a == step_b == 6 and data_a == data_b
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bit-identical
  # The same data in the same order: the losses the resumed run logged for
  # steps 3-6 (after the straight run's six rows) are the straight run's.
  strip = lambda rows: [
      {k: v for k, v in r.items() if k not in _TIMES} for r in rows
  ]
  rows = _train_rows(resumed)
  assert [r["step"] for r in rows[6:]] == [3, 4, 5, 6]
  assert strip(_train_rows(straight)[2:]) == strip(rows[6:])


def _start_and_wait(workdir, data_dir, rows=2):
  """A tiny training run of 100,000 steps started in the background, returned
  once it has logged ``rows`` steps."""
  proc = subprocess.Popen(
      _seed_train_cmd(
          workdir,
          data_dir,
          "--config.train.steps=100000",
          "--config.train.checkpoint_every=0",
          "--config.train.sample_every=0",
      ),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and not (
      metrics.exists() and metrics.read_text().count("\n") >= rows
  ):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.5)
  return proc


def test_a_second_trainer_is_refused_and_sigterm_saves(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _start_and_wait(workdir, data_dir)
  second = _seed_train(workdir, data_dir, "--config.train.steps=3", check=False)
  _fails(
      second, "WorkdirBusyError", f"being trained by process {proc.pid} on host"
  )
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "stopped by SIGTERM" in out
  saved = [int(s) for s in os.listdir(workdir / "checkpoints")]
  assert len(saved) == 1 and saved[0] >= 2
  # The first run's log is its own: every step once, in order.
  assert [r["step"] for r in _train_rows(workdir)] == list(
      range(1, saved[0] + 1)
  )
  out = _seed_train(
      workdir,
      data_dir,
      f"--config.train.steps={saved[0] + 2}",
      "--config.train.sample_every=0",
  )
  assert f"dallex: step {saved[0] + 2}/{saved[0] + 2}" in out.stdout
  assert f"train.steps: 100000 -> {saved[0] + 2}" in out.stdout
  assert _metrics(workdir)[-1]["step"] == saved[0] + 2


def test_ctrl_c_saves_and_the_next_run_continues_exactly(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _start_and_wait(workdir, data_dir)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0 and "stopped by SIGINT" in out, err[-3000:]
  (saved,) = [int(s) for s in os.listdir(workdir / "checkpoints")]
  end = f"--config.train.steps={saved + 2}"
  _seed_train(workdir, data_dir, end, "--config.train.sample_every=0")
  straight = tmp_path / "straight"
  _seed_train(straight, data_dir, end, "--config.train.sample_every=0",
              "--config.train.checkpoint_every=0")  # fmt: skip
  step_a, state_a, data_a = _final_params(workdir)
  step_b, state_b, data_b = _final_params(straight)
  assert step_a == step_b == saved + 2 and data_a == data_b
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)


def test_time_limit_saves_and_stops_at_a_log_step(tmp_path, data_dir):
  workdir = tmp_path / "run"
  out = _seed_train(
      workdir,
      data_dir,
      "--config.train.steps=100000",
      "--config.train.log_every=2",
      "--config.train.max_minutes=0.0001",
      "--config.train.sample_every=0",
  )
  assert (
      "dallex: step 2/100000 (stopped by the time limit of 0.0001 min)"
      in out.stdout
  )
  assert (
      "the time limit stopped training at step 2 of the 100000 planned: the "
      "model is not yet trained" in out.stdout
      and "The same command continues from here." in out.stdout
  )
  assert os.listdir(workdir / "checkpoints") == ["2"]
  # A finished run's grid.
  assert os.listdir(workdir / "samples") == ["step_0000002.png"]
  # The data state of a pipeline read in-process does not fit one read by workers.
  other = _seed_train(
      workdir,
      data_dir,
      "--config.train.steps=4",
      "--config.data.num_workers=2",
      check=False,
  )
  assert (
      other.returncode != 0
      and "resume with the data.num_workers" in other.stderr
  )
  # The checkpoint is left as it was.
  assert os.listdir(workdir / "checkpoints") == ["2"]
  bad = _seed_train(
      tmp_path / "bad", data_dir, "--config.train.max_minutes=-1", check=False
  )
  assert bad.returncode != 0 and "train.max_minutes must be >= 0" in bad.stderr


def test_repeated_non_finite_steps_stop_the_run(tmp_path, data_dir):
  workdir = tmp_path / "run"
  # An absurd learning rate makes the steps non-finite within the first few.
  out = _seed_train(workdir, data_dir, "--config.optim.d.lr=1e30",
                    "--config.optim.g.lr=1e30", "--config.train.steps=20",
                    "--config.train.sample_every=0",
                    "--config.train.checkpoint_every=1", check=False)  # fmt: skip
  _fails(out, "NonFiniteError", "non-finite steps in a row")
  rows = _metrics(workdir)
  assert rows[-1]["finite"] == 0.0 and rows[-1]["nonfinite_total"] >= 3
  # The loop checks each step after dispatching the next, yet stops at the
  # third bad step in a row, not later, and names it.
  bad = [r["step"] for r in rows if r["finite"] == 0.0]
  assert bad[:3] == list(range(bad[0], bad[0] + 3))
  assert f"3 non-finite steps in a row (up to step {bad[2]})" in out.stderr
  # Every checkpoint left behind holds finite parameters: the bad steps changed nothing.
  _, state, _ = _final_params(workdir)
  assert all(
      np.all(np.isfinite(x))
      for x in jax.tree.leaves(state)
      if x.dtype.kind == "f"
  )


def test_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(
        step,
        {"w": np.full((4,), float(step))},
        {"next_index": step},
        {"seed": 0},
    )
  ckpt.wait()
  state_dir = tmp_path / "ckpt" / "2" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != "_METADATA":
        os.remove(os.path.join(root, name))
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float64)}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    restored = ckpt.restore_latest(abstract)
  assert restored.step == 1 and restored.data == {"next_index": 1}
  np.testing.assert_array_equal(restored.state["w"], np.full((4,), 1.0))
  assert any(
      "checkpoint" in str(w.message)
      and "/2 could not be restored" in str(w.message)
      for w in caught
  )
  # With every checkpoint damaged, an error that names each one, and no fresh start.
  for root, _, files in os.walk(tmp_path / "ckpt" / "1" / "state"):
    for name in files:
      if name != "_METADATA":
        os.remove(os.path.join(root, name))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(
        ValueError, match="no checkpoint could be restored"
    ) as e:
      ckpt.restore_latest(abstract)
  assert "ckpt/1: " in str(e.value) and "ckpt/2: " in str(e.value)
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_a_config_that_fits_no_checkpoint_is_refused_and_changes_nothing(
    tmp_path, data_dir
):
  workdir = tmp_path / "run"
  _seed_train(workdir, data_dir)  # 4 steps: checkpoints and grids at 2 and 4
  saved = (workdir / "config.json").read_text()
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  wider = "--config.model.seed.hidden_dim=64"
  out = _seed_train(workdir, data_dir, "--config.train.steps=8", wider,
                    check=False)  # fmt: skip
  _fails(
      out,
      "no checkpoint could be restored",
      "checkpoints/4: ",
      "checkpoints/2: ",
      "--start_over",
  )
  assert (workdir / "config.json").read_text() == saved
  assert (
      sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
  )
  # Asked for, the earlier run is moved aside whole and a new one starts.
  out = _seed_train(workdir, data_dir, "--config.train.steps=1", "--start_over",
                    wider)  # fmt: skip
  (aside,) = [p for p in workdir.iterdir() if p.name.startswith("replaced_")]
  assert f"moved to {aside}" in out.stdout
  assert (aside / "config.json").read_text() == saved
  assert sorted(str(p.relative_to(aside)) for p in aside.rglob("*")) == sorted(
      p for p in before if p != "lock"
  )
  assert os.listdir(workdir / "checkpoints") == ["1"]
  assert [r["step"] for r in _metrics(workdir)] == [1]


def test_a_full_disk_stops_the_run_clearly_and_keeps_the_checkpoints(
    tmp_path, data_dir
):
  """Training onto a 30 MB filesystem: the first checkpoint (about 20 MB) fits,
  the second does not."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)],
      capture_output=True,
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr[-200:]}")
  try:
    workdir = disk / "run"
    args = (
        "--config.train.checkpoint_every=2",
        "--config.train.sample_every=0",
    )
    out = _seed_train(
        workdir, data_dir, "--config.train.steps=8", *args, check=False
    )
    assert out.returncode == 1
    # Where another thread left a line unfinished, the message may follow it.
    marker = "dallex: RunError: "
    said = [
        line[line.index(marker) :]
        for line in out.stderr.splitlines()
        if marker in line
    ]
    assert len(said) == 1, out.stderr[-3000:]
    assert said[0].startswith(
        "dallex: RunError: could not write checkpoint 4 in "
    )
    assert "(No space left on device)" in said[0]
    assert "newest: step 2" in said[0]
    step, _, _ = _final_params(workdir)
    assert step == 2
    # With room again, the same command removes the half-written checkpoint
    # and continues from step 2.
    subprocess.run(["mount", "-o", "remount,size=128m", str(disk)], check=True)
    out = _seed_train(workdir, data_dir, "--config.train.steps=8", *args)
    assert "resuming from" in out.stdout and "/checkpoints/2" in out.stdout
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [
        "4",
        "6",
        "8",
    ]
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_keep_zero_keeps_every_checkpoint_and_negative_is_refused(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "all"), keep=0, async_save=False)
  for step in (1, 2, 3, 4):
    ckpt.save(
        step,
        {"w": np.full((2,), float(step))},
        {"next_index": step},
        {"seed": 0},
    )
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2, 3, 4]
  ckpt.close()
  with pytest.raises(
      ValueError, match=r"keep \(train.keep_checkpoints\) must be >= 0"
  ):
    Checkpointer(str(tmp_path / "bad"), keep=-1)


def test_an_fsdp_axis_that_does_not_divide_the_devices_is_refused(tmp_path):
  """Refused before the run touches its workdir."""
  n = jax.device_count()
  config = tiny_config()
  config.train.fsdp = n + 1
  with pytest.raises(
      ValueError,
      match=f"train.fsdp={n + 1} must be a positive divisor of the {n} devices",
  ):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
