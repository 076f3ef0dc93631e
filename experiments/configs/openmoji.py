r"""The default model on OpenMoji (about 4,000 emoji captioned with their
Unicode names) at 32 px, for 30 minutes of training.

    python -m experiments.train --config experiments/configs/openmoji.py --workdir runs/openmoji
    python -m experiments.evaluate --workdir runs/openmoji --num 5000

after writing the data once: pip install 'dallex[openmoji]', then
python -m experiments.prepare_openmoji data/openmoji. 64 px:
--config.data.resolution=64. evaluate reports nearest-real-image retrieval and
the emoji-group classifier (dallex/evaluation/realdata.py); docs/quality.md
has what it reaches.
"""

from experiments.configs import folder


def get_config():
  c = folder.get_config()
  c.data.path = "data/openmoji"
  c.data.resolution = 32
  # The showcase's budget is wall clock; steps only bound it.
  c.train.update(
      steps=20000, max_minutes=30.0, checkpoint_every=1000, sample_every=1000
  )
  c.sample.prompts = [
      "grinning face",
      "red apple",
      "cat face",
      "rocket",
      "man technologist medium skin tone",
      "flag Japan",
  ]
  return c
