r"""COCO captions at 256 px, for a TPU slice or several GPUs (multi-host).

    python -m experiments.train --config experiments/configs/coco256.py \
        --workdir gs://BUCKET/coco256 --config.data.data_dir=~/tensorflow_datasets \
        [--distributed]

coco64 with two more up/down blocks and remat in the Transformer stacks.
Untested at this size so far: expect what coco64 reaches, at 4x the detail.
"""

from experiments.configs import coco64


def get_config():
  c = coco64.get_config()
  c.data.resolution = 256
  c.model.remat = True
  c.model.discriminator.update(base_channels=32, max_channels=512)
  c.train.update(batch_size=256, steps=400_000)
  return c
