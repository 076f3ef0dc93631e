r"""Your own folder of captioned images (images + metadata.jsonl, see dallex/data/caption_folder.py).

    python -m experiments.train --config experiments/configs/folder.py --workdir runs/folder \
        --config.data.path=DIR --config.data.resolution=32

The shapes32 model on your data, without its layout loss (its target, each
block's brightest colour, suits objects on a black background, not photographs;
turn it on with --config.model.generator.layout_head=True --config.loss.layout=50).
What it reaches depends on the data: watch
runs/folder/samples/ (the sample prompts default to the shapes captions; set
--config.sample.prompts to captions of your own).
"""

from experiments.configs import shapes32


def get_config():
  c = shapes32.get_config()
  c.data.name = "caption_folder"
  c.data.path = ""  # required: --config.data.path=DIR
  c.model.generator.layout_head = False
  c.loss.layout = 0.0
  c.train.update(steps=5000, checkpoint_every=500, sample_every=500)
  return c
