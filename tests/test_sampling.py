"""Sampling: an image depends on its seed and index only."""

import numpy as np

from conftest import run_python


def test_same_seed_same_images_across_batch_sizes_and_devices(tmp_path):
  out_path = tmp_path / "images.npz"
  run_python(
      "tests/helpers/seed_invariance.py", str(out_path), devices=8, check=True
  )
  r = dict(np.load(out_path))
  # Float outputs: 1 device vs sharded over 8.
  assert r["one_device"].shape == (8, 32, 32, 3)
  # Partitioned matmuls sum in another order: agreement far below one uint8
  # level (1/127.5; measured up to 1.4e-4).
  np.testing.assert_allclose(r["sharded"], r["one_device"], atol=1e-3)
  # uint8 outputs: batch sizes 8, 3 and 1 (rounding may move a pixel by one level at most).
  for name in ("batch3", "batch1"):
    assert r[name].dtype == np.uint8 and r[name].shape == (8, 32, 32, 3)
    assert (
        np.abs(r[name].astype(int) - r["batch8"].astype(int)).max() <= 1
    ), name
  # Another seed, and other indices of one prompt, give other images.
  assert np.abs(r["seed1"].astype(int) - r["batch8"].astype(int)).mean() > 1.0
  repeated = r["repeated"].astype(int)
  assert np.abs(repeated[0] - repeated[1]).mean() > 1.0
  # Index 0, seed 0.
  assert np.abs(repeated[0] - r["batch8"][0].astype(int)).max() <= 1
