"""The device cache: its order, its batches, and training from it."""

import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dallex.data import device_cache
from dallex.text import ByteTokenizer

from conftest import memory_source
from conftest import run_python
from conftest import train_cli as _train
from test_loop import _TIMES, _final_params, _train_rows


def _indices(seed, steps, batch_size, n):
  f = jax.jit(lambda s: device_cache.batch_indices(seed, s, batch_size, n)[0])
  return np.stack([np.asarray(f(s)) for s in steps])


@pytest.mark.parametrize("n", [1, 7, 600, 65537])
def test_permute_is_a_permutation(n):
  p = jax.jit(lambda k: device_cache.permute(k, jnp.arange(n), n))(
      jax.random.key(5)
  )
  np.testing.assert_array_equal(np.sort(np.asarray(p)), np.arange(n))


def test_each_epoch_reads_every_example_at_most_once_in_its_own_seeded_order():
  n, b = 600, 32  # 18 steps an epoch, 24 examples left out of each
  epoch0 = _indices(0, range(18), b, n).reshape(-1)
  epoch1 = _indices(0, range(18, 36), b, n).reshape(-1)
  for epoch in (epoch0, epoch1):
    assert len(set(epoch.tolist())) == 18 * b
    assert epoch.min() >= 0 and epoch.max() < n
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(
      epoch0, _indices(0, range(18), b, n).reshape(-1)
  )
  assert not np.array_equal(epoch0, _indices(1, range(18), b, n).reshape(-1))
  # Not the identity, nor a rotation of it: neighbours in the order are far apart.
  assert np.mean(np.abs(np.diff(epoch0))) > n / 10


def test_batches_hold_the_examples_images_and_one_of_their_captions():
  source = memory_source(40, captions_per_example=lambda i: 1 + i % 3)
  cache = device_cache.load(source, resolution=8, max_length=32)
  assert cache.images.shape == (40, 8, 8, 3) and cache.ids.shape == (40, 3, 32)
  np.testing.assert_array_equal(cache.num_captions, 1 + np.arange(40) % 3)
  gather = jax.jit(functools.partial(device_cache.batch, seed=0, batch_size=8))
  tokenizer = ByteTokenizer(32)
  seen = {}
  for step in range(50):
    batch = jax.device_get(gather(cache, step))
    assert batch["image"].dtype == np.float32 and batch["ids"].dtype == np.int32
    # The mask is the tokenizer's: BOS through EOS.
    for mask, text in zip(batch["mask"], tokenizer.decode(batch["ids"])):
      np.testing.assert_array_equal(mask, tokenizer.encode([text])[1][0])
    for image, text in zip(batch["image"], tokenizer.decode(batch["ids"])):
      _, i, _, j = text.split()
      np.testing.assert_allclose(image, int(i) / 127.5 - 1.0)
      assert int(j) < 1 + int(i) % 3
      seen.setdefault(int(i), set()).add(int(j))
  # Over 50 steps every caption of the three-caption examples came up.
  assert all(seen[i] == {0, 1, 2} for i in seen if i % 3 == 2)


def test_a_set_smaller_than_a_batch_is_refused():
  cache = device_cache.load(memory_source(3), resolution=8, max_length=32)
  with pytest.raises(ValueError, match="3 examples, fewer than one batch of 8"):
    device_cache.batch(cache, 0, seed=0, batch_size=8)


def test_fits_leaves_three_quarters_of_the_device_to_training():
  device = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": 4000})
  assert device_cache.fits(1000, device)
  assert not device_cache.fits(1001, device)
  # A CPU reports no limit: the host's memory counts.
  host = types.SimpleNamespace(memory_stats=lambda: None)
  assert device_cache.capacity(host) > 2**20


_EIGHT_DEVICES = """
import functools, json, sys, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from dallex import train
from dallex.data import device_cache
from conftest import memory_source
assert jax.device_count() == 8
mesh = train.data_mesh()
cache = device_cache.put(
    device_cache.load(memory_source(100, 2), resolution=8, max_length=32),
    NamedSharding(mesh, P()),
)
gather = jax.jit(
    functools.partial(device_cache.batch, seed=3, batch_size=16),
    out_shardings=NamedSharding(mesh, P("data")),
)
print(json.dumps([np.asarray(gather(cache, s)["ids"]).tolist() for s in range(8)]))
"""


def test_the_same_batches_on_one_device_and_on_eight():
  out = run_python("-c", _EIGHT_DEVICES, devices=8, check=True)
  cache = device_cache.load(memory_source(100, 2), resolution=8, max_length=32)
  gather = jax.jit(functools.partial(device_cache.batch, seed=3, batch_size=16))
  here = [np.asarray(gather(cache, s)["ids"]).tolist() for s in range(8)]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_training_from_the_cache_with_a_split_state_resumes_exactly(
    tmp_path, small_folder
):
  """The tiny config on 40 examples, 5 steps an epoch, on 4 host devices with
  the state split over an fsdp axis of 2: 7 steps straight, and 3 then 4
  more, end bit-identical; the run says where its batches come from. The
  article's model, which compiles faster: the cache and the split state are
  the same code for both models."""
  common = (
      "--config.data.name=caption_folder",
      f"--config.data.path={small_folder}",
      "--config.data.cache=device",
      "--config.train.fsdp=2",
      "--config.train.sample_every=0",
  )
  data_dir = str(tmp_path / "data")
  train = lambda workdir, *extra: _train(
      workdir, data_dir, *common, *extra, devices=4, arch="seed"
  )
  straight = train(tmp_path / "a", "--config.train.steps=7")
  assert "training set (40 examples" in straight.stdout
  assert "is held on the devices" in straight.stdout
  train(tmp_path / "b", "--config.train.steps=3")
  resumed = train(tmp_path / "b", "--config.train.steps=7")
  assert "resuming from" in resumed.stdout
  step_a, state_a, data_a = _final_params(tmp_path / "a")
  step_b, state_b, data_b = _final_params(tmp_path / "b")
  assert step_a == step_b == 7 and data_a == data_b
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  strip = lambda rows: [
      {k: v for k, v in r.items() if k not in _TIMES} for r in rows
  ]
  assert strip(_train_rows(tmp_path / "a")[3:]) == strip(
      _train_rows(tmp_path / "b")[3:]
  )
