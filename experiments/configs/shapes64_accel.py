r"""The built-in shapes at 64 px with the accelerator-sized model, for one GPU or TPU.

    python -m experiments.train --config experiments/configs/shapes64_accel.py \
        --workdir runs/shapes64_accel

``dallex.config.accelerator_sizes``: bfloat16, batch 256, wide Transformers
and convolutions, the set (600 MB as uint8) held on the device. The device
check (``python -m experiments.device_check``) measures its step; no
accelerator run of it has been measured yet, so there is no result to expect.
"""

from dallex.config import accelerator_sizes
from experiments.configs import shapes32


def get_config():
  c = accelerator_sizes(shapes32.get_config())
  c.data.resolution = 64
  c.train.update(
      steps=20_000, checkpoint_every=2000, log_every=100, sample_every=1000
  )
  return c
