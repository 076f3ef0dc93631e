r"""COCO captions at 64 px, for an accelerator (TFDS `coco_captions`).

    python -m experiments.train --config experiments/configs/coco64.py --workdir runs/coco64 \
        --config.data.data_dir=~/tensorflow_datasets

Building coco_captions the first time needs TensorFlow: pip install 'dallex[tf]'.

The default model family, wider and deeper, bfloat16 compute, batch 256,
without the layout loss (its target suits objects on a black background).
Never trained yet: no accelerator run has been measured, so there is no
result to expect.
"""

from dallex.config import default_config


def get_config():
  c = default_config()
  c.data.update(
      name="coco_captions",
      resolution=64,
      image_key="image",
      caption_key="captions/text",
      num_threads=8,
      prefetch=8,
  )
  c.model.dtype = "bfloat16"
  c.model.text.update(max_length=256, width=512, depth=6, heads=8)
  c.model.discriminator.text.update(max_length=256, width=256, depth=4, heads=4)
  c.model.generator.update(style_dim=512, grid=8, width=512, depth=6, heads=8)
  c.model.generator.update(
      base_channels=512, min_channels=128, layout_head=False
  )
  c.model.discriminator.update(
      base_channels=64, max_channels=512, hidden=512, embed_dim=256
  )
  c.model.z_dim = c.model.ca_dim = 128
  c.loss.layout = 0.0
  c.train.update(
      steps=200_000,
      batch_size=256,
      checkpoint_every=5000,
      log_every=100,
      sample_every=2000,
  )
  c.sample.update(
      num_per_prompt=4,
      prompts=[
          "a red double decker bus on a city street",
          "a plate of food with broccoli",
          "a giraffe standing next to a tree",
          "a man riding a wave on a surfboard",
      ],
  )
  return c
