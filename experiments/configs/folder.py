r"""Your own folder of captioned images (images + metadata.jsonl, see docs/data.md).

    python -m experiments.train --config experiments/configs/folder.py --workdir runs/folder \
        --config.data.path=DIR --config.data.resolution=32

The default model on your data: its layout head learns a 16 x 16 copy of
each real image (block means) from the caption, and an L1 pulls its images
toward their captions' real ones. What it reaches depends on the data; on
OpenMoji (``openmoji.py``) the nearest real image of a generated one is
the named one for 46-50% of the captions after 4,200 steps.
Watch runs/folder/samples/ and set --config.sample.prompts to captions of
your own.
"""

from dallex.config import default_config


def get_config():
  c = default_config()
  c.data.name = "caption_folder"
  c.data.path = ""  # required: --config.data.path=DIR
  c.train.update(steps=5000, checkpoint_every=500, sample_every=500)
  return c
