r"""Your own folder of captioned images (images + metadata.jsonl, see dallex/data/caption_folder.py).

    python -m experiments.train --config experiments/configs/folder.py --workdir runs/folder \
        --config.data.path=DIR --config.data.resolution=32

The shapes32 model on your data. What it reaches depends on the data: watch
runs/folder/samples/ (the sample prompts default to the shapes captions; set
--config.sample.prompts to captions of your own).
"""

from experiments.configs import shapes32


def get_config():
  c = shapes32.get_config()
  c.data.name = "caption_folder"
  c.data.path = ""  # required: --config.data.path=DIR
  c.train.update(steps=5000, checkpoint_every=500, sample_every=500)
  return c
