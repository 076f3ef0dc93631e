"""The input pipeline: Grain over a random-access source, seeded and resumable.

    source -> shard by JAX process -> seeded global shuffle -> repeat (reshuffled
    every epoch) -> per example: pick a caption, fit the image, tokenize,
    normalise -> batch (drop remainder) -> prefetch on threads [-> worker processes]

Everything random is a function of (seed, position in the stream), so the same
seed gives the same batches, and an iterator's ``get_state()`` restored with
``set_state()`` in a new process continues with exactly the next batch.

Captions are padded to the tokenizer's fixed ``max_length``: every process and
every step sees one shape, so the train step compiles once and global arrays
can be assembled across hosts.

Reading a TFDS example is mostly Python (protobuf parsing and feature
decoding, ~0.2 ms each), so threads share one core through the GIL; on a host
with many cores, ``num_workers`` processes read batches in parallel. Workers
split the stream by batch index and grain hands their batches back in order,
so the batches are the same for any number of workers.
"""

from __future__ import annotations

import grain
import jax
import numpy as np
from absl import flags

from dallex.data.images import center_crop_resize
from dallex.data.sources import Source
from dallex.text import ByteTokenizer

Batch = dict[str, np.ndarray]


class _PrepareExample:
  """Turns a raw source example into model inputs (a picklable grain RandomMap)."""

  def __init__(self, source: Source, resolution: int, max_length: int):
    self.source = source
    self.resolution = resolution
    self.tokenizer = ByteTokenizer(max_length)

  def __call__(self, example: dict, rng: np.random.Generator) -> Batch:
    image, captions = self.source.extract(example)
    # One caption per visit, from the seeded per-element rng: each epoch can see
    # a different caption of the same image, reproducibly.
    text = captions[int(rng.integers(len(captions)))]
    image = center_crop_resize(image, self.resolution)
    ids, mask = self.tokenizer.encode([text])
    return {
        "image": image.astype(np.float32) / 127.5 - 1.0,
        "ids": ids[0],
        "mask": mask[0],
    }


def make_dataset(
    source: Source,
    *,
    batch_size: int,
    resolution: int,
    max_length: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
    num_workers: int = 0,
) -> grain.IterDataset:
  """Builds the pipeline for one process.

  Args:
    source: what to read.
    batch_size: examples per batch on this process (the global batch divided by
      the process count).
    resolution: R; images are fitted to [R, R, 3].
    max_length: L, the tokenizer's fixed length.
    seed: the only source of randomness (shuffle order and caption choice).
    shard_index, shard_count: this process's shard; default JAX's process
      index and count. Shards are disjoint and together cover the source.
    shuffle: shuffle globally (differently every epoch).
    num_epochs: None repeats forever.
    num_threads, prefetch: reader threads and batches read ahead (per worker).
    num_workers: reader processes; 0 reads in this process. Workers start by
      pickling ``source`` and importing this module, a few seconds each.

  Returns:
    A ``grain.IterDataset`` of dicts: ``image`` float32 [B, R, R, 3] in [-1, 1],
    ``ids`` int32 [B, L], ``mask`` bool [B, L]. ``iter()`` it; the iterator has
    ``get_state()`` / ``set_state()``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if num_workers < 0:
    raise ValueError(
        f"num_workers must be >= 0 (0: read in this process), got {num_workers}"
    )
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(
        f"shard_index {shard_index} must be in [0, shard_count={shard_count})"
    )
  ds = grain.MapDataset.source(source.data)[shard_index::shard_count]
  if len(ds) < batch_size:
    raise ValueError(
        f"shard {shard_index}/{shard_count} holds {len(ds)} examples, fewer "
        f"than one batch of {batch_size}"
    )
  ds = ds.seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(_PrepareExample(source, resolution, max_length))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags (--grain_*); outside an absl app
      # (a notebook, pytest) nothing parsed them: take their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
