r"""COCO captions at 64 px, for an accelerator (TFDS `coco_captions`).

    python -m experiments.train --config experiments/configs/coco64.py --workdir runs/coco64 \
        --config.data.data_dir=~/tensorflow_datasets

Building coco_captions the first time needs TensorFlow: pip install 'dallex[tf]'.

The accelerator-sized model (``dallex.config.accelerator_sizes``: bfloat16,
batch 256) with COCO's longer captions.
No accelerator run has been measured, so there is no result to expect;
`make test` trains it for 3 steps at test sizes on TFDS mock data of
coco_captions' layout (tests/test_configs.py).
"""

from dallex.config import accelerator_sizes, default_config


def get_config():
  c = accelerator_sizes(default_config())
  c.data.update(
      name="coco_captions",
      resolution=64,
      image_key="image",
      caption_key="captions/text",
      num_threads=8,
      prefetch=8,
  )
  c.model.text.max_length = c.model.discriminator.text.max_length = 256
  c.train.update(
      steps=200_000,
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
