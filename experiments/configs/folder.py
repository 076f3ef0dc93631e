r"""Your own folder of captioned images (images + metadata.jsonl, see docs/data.md).

    python -m experiments.train --config experiments/configs/folder.py --workdir runs/folder \
        --config.data.path=DIR --config.data.resolution=32

The default model on your data, without its layout loss: its target, each
block's brightest colour, suits objects on a black background, not
photographs (turn it on with --config.loss.layout=50). What it reaches
depends on the data and is not measured yet: watch runs/folder/samples/ and
set --config.sample.prompts to captions of your own.
"""

from dallex.config import default_config


def get_config():
  c = default_config()
  c.data.name = "caption_folder"
  c.data.path = ""  # required: --config.data.path=DIR
  c.model.generator.layout_head = False
  c.loss.layout = 0.0
  c.train.update(steps=5000, checkpoint_every=500, sample_every=500)
  return c
