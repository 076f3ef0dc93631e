"""A tiny end-to-end training config for the tests (32 px shapes, 4 steps).

    python -m experiments.train --config tests/helpers/tiny_train_config.py --workdir W \\
        --config.data.data_dir=DIR

`--config tests/helpers/tiny_train_config.py:seed` gives the article's model
at the same sizes: the tests of the loop's mechanics (signals, time limits,
a full disk, a refused config, the device cache's resumption), where the
model is not what is tested, train it because it traces and compiles
several times faster.
"""

import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import tiny_config  # noqa: E402


def get_config(arch: str = "dallex"):
  c = tiny_config(arch, resolution=32)
  c.data.num_threads = 1
  # The loop tests train on the full 50,000-example shapes, which take 20 s to
  # load into the device cache; test_device_cache trains from the cache.
  c.data.cache = "none"
  c.train.update(steps=4, batch_size=8, log_every=1, max_nonfinite=3)
  c.train.checkpoint_every = c.train.sample_every = 2
  c.optim.g.lr = c.optim.d.lr = 1e-3
  c.sample.update(
      prompts=[
          "a small red circle on the left",
          "a large blue square at the top",
      ],
      num_per_prompt=2,
  )
  return c
