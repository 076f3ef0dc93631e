import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import memory_source
from conftest import one_shard_dataset
from dallex.data.sources import Source
from dallex.text import ByteTokenizer


def _captions(batch):
  return ByteTokenizer(32).decode(batch["ids"])


def _digest(batches):
  h = hashlib.sha256()
  for b in batches:
    for key in sorted(b):
      h.update(np.ascontiguousarray(b[key]).tobytes())
  return h.hexdigest()


def test_batches_are_well_formed():
  batch = next(iter(one_shard_dataset(memory_source(10))))
  assert (
      batch["image"].shape == (4, 8, 8, 3)
      and batch["image"].dtype == np.float32
  )
  assert batch["ids"].shape == (4, 32) and batch["ids"].dtype == np.int32
  assert batch["mask"].dtype == bool
  for image, caption in zip(batch["image"], _captions(batch)):
    i = int(caption.split()[1])
    # The image stays with its caption.
    np.testing.assert_allclose(image, i / 127.5 - 1.0)


def test_same_seed_same_batches_other_seed_other_batches():
  source = memory_source(50)
  first = [
      next(it)
      for it in [iter(one_shard_dataset(source, seed=3))]
      for _ in range(20)
  ]
  again = [
      next(it)
      for it in [iter(one_shard_dataset(source, seed=3))]
      for _ in range(20)
  ]
  other = [
      next(it)
      for it in [iter(one_shard_dataset(source, seed=4))]
      for _ in range(20)
  ]
  assert _digest(first) == _digest(again)
  assert _digest(first) != _digest(other)


def test_each_epoch_is_a_new_permutation():
  source = memory_source(12)
  it = iter(one_shard_dataset(source, batch_size=3))
  epochs = []
  for _ in range(3):
    seen = [int(c.split()[1]) for _ in range(4) for c in _captions(next(it))]
    assert sorted(seen) == list(range(12))
    epochs.append(seen)
  assert epochs[0] != epochs[1] != epochs[2]


def test_process_shards_are_disjoint_and_cover_the_data():
  source = memory_source(40)
  shards = []
  for index in range(2):
    ds = one_shard_dataset(
        source, batch_size=2, shard_index=index, shard_count=2, num_epochs=1
    )
    shards.append({int(c.split()[1]) for b in ds for c in _captions(b)})
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(40))


def test_a_caption_is_chosen_per_visit_reproducibly():
  source = memory_source(4, captions_per_example=3)

  def chosen(seed):
    it = iter(one_shard_dataset(source, seed=seed, batch_size=4))
    return [c for _ in range(30) for c in _captions(next(it))]

  picks = chosen(0)
  assert picks == chosen(0)
  for i in range(4):
    assert {c for c in picks if c.startswith(f"example {i} ")} == {
        f"example {i} caption {j}" for j in range(3)
    }


def test_worker_processes_give_the_same_batches_and_resume():
  source = memory_source(50)
  expected = [
      next(it)
      for it in [iter(one_shard_dataset(source, seed=3))]
      for _ in range(12)
  ]
  it = iter(one_shard_dataset(source, seed=3, num_workers=2))
  try:
    assert _digest([next(it) for _ in range(8)]) == _digest(expected[:8])
    state = it.get_state()
  finally:
    it.close()
  resumed = iter(one_shard_dataset(source, seed=3, num_workers=2))
  try:
    resumed.set_state(state)
    assert _digest([next(resumed) for _ in range(4)]) == _digest(expected[8:])
  finally:
    resumed.close()


def test_bad_arguments():
  with pytest.raises(ValueError, match="fewer than one batch"):
    one_shard_dataset(memory_source(3), batch_size=4)
  with pytest.raises(ValueError, match="shard_index 2"):
    one_shard_dataset(
        memory_source(3), batch_size=1, shard_index=2, shard_count=2
    )
  with pytest.raises(ValueError, match="num_workers must be >= 0"):
    one_shard_dataset(memory_source(3), batch_size=1, num_workers=-1)


_RESUME_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from dallex.data import pipeline
    from dallex.data.shapes_builder import DallexShapes, ShapesConfig
    from dallex.data.sources import Source
    data_dir, state, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    config = ShapesConfig(name="r32_tiny", resolution=32, num_train=600, num_test=100,
                          num_heldout=100)
    builder = DallexShapes(config=config, data_dir=data_dir)
    source = Source(builder.as_data_source(split="train"), "image", "caption")
    it = iter(pipeline.make_dataset(source, batch_size=16, resolution=32, max_length=96,
                                    seed=7, shard_index=0, shard_count=1))
    it.set_state(state)
    h = hashlib.sha256()
    for _ in range(n):
      b = next(it)
      for key in sorted(b):
        h.update(np.ascontiguousarray(b[key]).tobytes())
    print(h.hexdigest())
""")


def test_iterator_state_restores_the_exact_continuation_in_a_new_process(
    tiny_shapes,
):
  builder, data_dir = tiny_shapes
  source = Source(builder.as_data_source(split="train"), "image", "caption")
  it = iter(
      one_shard_dataset(
          source, batch_size=16, resolution=32, max_length=96, seed=7
      )
  )
  for _ in range(45):  # past the first epoch of 37 batches
    next(it)
  state = it.get_state()
  expected = _digest([next(it) for _ in range(5)])
  out = subprocess.run(
      [sys.executable, "-c", _RESUME_SCRIPT, data_dir, json.dumps(state), "5"],
      check=True,
      capture_output=True,
      text=True,
  )
  assert out.stdout.strip().splitlines()[-1] == expected
