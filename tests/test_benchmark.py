"""The benchmark's arithmetic: FLOPs counted over every Transformer block, and
utilisation as the step's FLOP rate over the machine's matmul rate."""

import jax
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import tiny_config
from experiments import benchmark


@pytest.fixture(autouse=True)
def _few_repeats():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(steps=2, repeats=1):
    yield


def test_train_flops_count_every_scanned_block_and_utilisation_is_their_rate_over_the_limit():
  config = tiny_config()
  config.train.batch_size = 4
  out = benchmark.bench_train(config, matmul=1e9)
  assert out["train_utilisation"] == pytest.approx(out["train_flops_per_s"] / 1e9)
  assert out["train_images_per_s"] == pytest.approx(4 * out["train_steps_per_s"])
  assert out["train_memory_bytes"]["peak_estimate"] > 0
  # XLA's cost analysis counts the body of a scan once, so the scanned step's
  # own count misses a block of each two-block stack; the benchmark's does not.
  step, state, batch, _ = benchmark._train_setup(config, jax.devices()[:1])
  scanned = benchmark._flops(step.lower(state, batch).compile())
  assert out["train_step_flops"] > scanned > 0

