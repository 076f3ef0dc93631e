"""A short real training run must learn what the caption asks: the checker
places its objects far above chance, most images without extra objects.

About 1.5 minutes alone on 2 cores (2 beside the rest of the suite), so it
runs in every `make test`.
"""

import json
import os

from conftest import SUITE_XLA_FLAGS, run_python

CHANCE_CELL = 1 / 9


def _users_backend_env() -> dict:
  """The environment without the suite's compile-time XLA flags (conftest.py):
  a real-size model runs far longer than it compiles, and this test trains it
  as a user does. Alone, it took 2 min 10 s with the optimising backend,
  3 min 6 s with the unoptimised one."""
  names = {f.split("=")[0] for f in SUITE_XLA_FLAGS}
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if f.split("=")[0] not in names]
  return dict(os.environ, XLA_FLAGS=" ".join(flags))


def test_200_steps_of_shapes32_place_objects_far_above_chance(
    tmp_path, full_shapes_r32
):
  data_dir = str(full_shapes_r32.data_dir_root)
  env = _users_backend_env()
  run = tmp_path / "run"
  # 200 steps of 16 see 3,200 images once, so the first 3,200 are all the
  # run needs: each is still seen once, and the device cache reads them in a
  # second instead of the whole set's ten.
  # fmt: off
  run_python("-m", "experiments.train", "--config=experiments/configs/shapes32.py",
             f"--workdir={run}", "--config.train.steps=200",
             f"--config.data.data_dir={data_dir}",
             "--config.data.train_split=train[:3200]",
             "--config.train.sample_every=0",
             env=env, timeout=1800, check=True)
  run_python("-m", "experiments.evaluate", f"--workdir={run}", "--split=test",
             "--num=300", f"--out={tmp_path / 'eval.json'}", f"--data_dir={data_dir}",
             "--diversity_captions=0", env=env, check=True)
  # fmt: on
  metrics = json.loads((tmp_path / "eval.json").read_text())["splits"]["test"]
  # What 200 steps learn of a caption is where each object goes, one object
  # per object asked for. Measured at shapes32's own settings on an Intel
  # Xeon VM, three seeds (RESULTS.md 53): cell accuracy 0.87 / 0.91 / 0.83,
  # no extra objects 1.00 / 1.00 / 0.98; before shapes32 pulled G's images
  # toward the real ones, 0.82-0.86 and 0.98-1.00 on an AMD EPYC VM (46),
  # 0.51 and 0.43 on that Intel VM (48). A generator that ignores the
  # caption places objects at chance (1/9: every cell is equally likely in
  # the data); one that draws k >= 2 blobs to catch the asked-for cell
  # draws extras in nearly every image (and its k/9 passes the first test
  # only from k = 6), so it fails the second test.
  assert metrics["cell_accuracy"] > 5 * CHANCE_CELL, metrics
  assert metrics["no_extra_rate"] > 0.8, metrics
