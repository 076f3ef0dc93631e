"""The training set held in device memory, each step's batch gathered inside the compiled step.

    cache = device_cache.load(source, resolution=R, max_length=L)   # host arrays, once
    arrays = device_cache.put(cache, sharding)                      # onto the devices
    batch = device_cache.batch(arrays, step, seed=s, batch_size=B)  # inside jit

Which examples a step reads is a function of (seed, step) alone. Epoch ``e =
step // (N // B)`` visits the N examples in the order of a permutation seeded
by (seed, e): a Feistel network over the example index, evaluated for just
the B positions the step needs, so there is no host work, no sort of N keys
and no loop whose length depends on the data (docs/data.md says what each
costs). Each example's caption is drawn with the key of (seed, step). So the
same seed gives the same batches on any number of devices or hosts, and a
resumed run continues with the next batch: its position is the step. As in
the Grain pipeline, the ``N % B`` examples an epoch's permutation puts last
are not read in that epoch.

A caption-folder or TFDS example may have several captions: ``ids`` holds up
to the most any example has, ``num_captions`` how many each has.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dallex.data.images import center_crop_resize
from dallex.data.sources import Source
from dallex.text import PAD_ID, ByteTokenizer

# The cache may take this share of one device's memory (of the host's on CPU),
# leaving the rest to the model, its activations and XLA's buffers.
MEMORY_SHARE = 0.25
# Keys of the data order, apart from the step keys of the train step's noise
# (which fold in step numbers far below this one).
_DATA_STREAM = 2**32 - 1
_ROUNDS = 6


class Cache(NamedTuple):
  """A dataset as arrays (numpy on the host, or jax arrays on the devices).

  images: uint8 [N, R, R, 3]; ids: int16 [N, C, L] token ids, rows past an
  example's captions padded; num_captions: int32 [N], each in [1, C].
  """

  images: np.ndarray | jax.Array
  ids: np.ndarray | jax.Array
  num_captions: np.ndarray | jax.Array

  @property
  def nbytes(self) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in self)


def _read(data, start: int, stop: int) -> list[dict]:
  """Examples [start, stop) of a random-access source, in one call where it can."""
  if hasattr(data, "__getitems__"):
    return data.__getitems__(list(range(start, stop)))
  return [data[i] for i in range(start, stop)]


def load(
    source: Source, *, resolution: int, max_length: int, chunk: int = 1000
) -> Cache:
  """Every example of ``source``, its image fitted to [R, R, 3] and its
  captions tokenized to ``max_length``, as host arrays."""
  n = len(source.data)
  if n == 0:
    raise ValueError("the data source is empty: nothing to cache")
  tokenizer = ByteTokenizer(max_length)
  images = np.empty((n, resolution, resolution, 3), np.uint8)
  captions: list[np.ndarray] = []
  for start in range(0, n, chunk):
    for i, example in enumerate(
        _read(source.data, start, min(n, start + chunk))
    ):
      image, texts = source.extract(example)
      images[start + i] = center_crop_resize(image, resolution)
      captions.append(tokenizer.encode(texts)[0].astype(np.int16))
  num_captions = np.array([len(c) for c in captions], np.int32)
  ids = np.full((n, num_captions.max(), max_length), PAD_ID, np.int16)
  for i, c in enumerate(captions):
    ids[i, : len(c)] = c
  return Cache(images, ids, num_captions)


def capacity(device: jax.Device) -> int:
  """Bytes of memory one device has: its allocator's limit, or on a CPU
  (whose devices share the host's memory) the host's physical memory."""
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits(nbytes: int, device: jax.Device) -> bool:
  """Whether a cache of ``nbytes`` leaves the device room for training."""
  return nbytes <= MEMORY_SHARE * capacity(device)


def put(cache: Cache, sharding: jax.sharding.Sharding) -> Cache:
  """The host arrays as global arrays with ``sharding`` (replicated: every
  device holds the whole set). On several hosts each passes the same arrays."""
  return Cache(
      *(
          jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])
          for x in cache
      )
  )


def _mix(x: jax.Array) -> jax.Array:
  """A 32-bit integer hash (uint32 -> uint32) with full avalanche."""
  x ^= x >> 16
  x *= jnp.uint32(0x7FEB352D)
  x ^= x >> 15
  x *= jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def permute(key: jax.Array, positions: jax.Array, n: int) -> jax.Array:
  """``positions`` (int [B], each in [0, n)) mapped through the permutation
  of [0, n) that ``key`` picks.

  A balanced Feistel network permutes [0, 4^h) with 4^h >= n; an image at or
  past n is sent through it again until it lands in [0, n) ("cycle walking"),
  which keeps it a permutation of [0, n). The walk takes a fixed number of
  turns, not a loop until every image is in: a loop whose end depends on the
  data makes a GPU's host wait for the device in each step. Each turn leaves
  an image out with probability q = 1 - n / 4^h < 3/4, so the turns are as
  many as leave one out with probability under 2^-64; such an image would be
  folded back (x mod n).
  """
  half = max(1, ((n - 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(key, (_ROUNDS,), jnp.uint32)

  def encrypt(x):
    left, right = x >> half, x & mask
    for r in range(_ROUNDS):
      left, right = right, left ^ (_mix(right ^ round_keys[r]) & mask)
    return (left << half) | right

  q = 1.0 - n / 4**half
  turns = 0 if q == 0 else math.ceil(64 / -math.log2(q))
  walk = lambda _, x: jnp.where(x >= n, encrypt(x), x)
  # Eight turns to a loop iteration: one fused kernel rather than eight.
  x = encrypt(positions.astype(jnp.uint32))
  x = jax.lax.fori_loop(0, turns, walk, x, unroll=8)
  return (x % n).astype(jnp.int32)


def batch_indices(
    seed: int, step: jax.Array, batch_size: int, n: int
) -> tuple[jax.Array, jax.Array]:
  """The examples step ``step`` reads (int32 [B]) and the key of its captions."""
  per_epoch = n // batch_size
  epoch, position = step // per_epoch, step % per_epoch
  stream = jax.random.fold_in(jax.random.key(seed), _DATA_STREAM)
  order = jax.random.fold_in(stream, epoch)
  positions = position * batch_size + jnp.arange(batch_size)
  # fold_in(stream, step) alone would equal the order key of epoch == step.
  captions = jax.random.fold_in(jax.random.fold_in(stream, step), 1)
  return permute(order, positions, n), captions


def batch(
    cache: Cache, step: jax.Array, *, seed: int, batch_size: int
) -> dict[str, jax.Array]:
  """Step ``step``'s batch, as the Grain pipeline gives it: ``image`` float32
  [B, R, R, 3] in [-1, 1], ``ids`` int32 [B, L], ``mask`` bool [B, L]."""
  n = cache.images.shape[0]
  if n < batch_size:
    raise ValueError(
        f"the cached dataset holds {n} examples, fewer than one batch of "
        f"{batch_size}"
    )
  index, key = batch_indices(seed, step, batch_size, n)
  count = cache.num_captions[index]
  choice = jnp.minimum(
      (jax.random.uniform(key, (batch_size,)) * count).astype(jnp.int32),
      count - 1,
  )
  ids = cache.ids[index, choice].astype(jnp.int32)
  return {
      "image": cache.images[index].astype(jnp.float32) / 127.5 - 1.0,
      "ids": ids,
      "mask": ids != PAD_ID,
  }
