r"""`shapes32` at 64 px (one more up/down block).

    python -m experiments.train --config experiments/configs/shapes64.py --workdir runs/shapes64

About 4x the compute of shapes32 per step; meant for a GPU or a patient CPU.
Not yet trained to its budget: no result to expect is measured.
"""

from experiments.configs import shapes32


def get_config():
  c = shapes32.get_config()
  c.data.resolution = 64
  c.train.update(
      steps=5000, batch_size=64, checkpoint_every=1000, sample_every=500
  )
  return c
