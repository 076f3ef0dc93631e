r"""The default model on OpenMoji (about 4,000 emoji captioned with their
Unicode names) at 32 px, for 30 minutes of training.

    python -m experiments.train --config experiments/configs/openmoji.py --workdir runs/openmoji
    python -m experiments.evaluate --workdir runs/openmoji --num 5000

after writing the data once: pip install 'dallex[openmoji]', then
python -m experiments.prepare_openmoji data/openmoji. 64 px:
--config.data.resolution=64 (not yet measured).

Reaches, at 4,200 fixed steps, seeds 0, 1, 2 on a 2-core Intel Xeon VM: the
nearest real image of a generated one (dallex/evaluation/realdata.py) is
the one its caption names for 46-50% of the captions, among the five
nearest for 75-77% (chance 0.12%); a classifier of the emoji groups fit
on the real images reads 46-48% of the generated ones right (chance
11%; the real images it was fit on 96%, real images it was not 58%).
Alone, its own 30 minutes held 4,750 steps on that VM kind (188
GFLOP/s, seed 0): 54%, 81% and 49%.
RESULTS.md 38-39, 43, 55 and 59, docs/quality.md.
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
