r"""`shapes32`, its scenes captioned in English or Chinese.

    python -m experiments.train --config experiments/configs/shapes32_mixed.py --workdir runs/mixed
    python -m experiments.evaluate --workdir runs/mixed --num 2000 --out runs/mixed/eval.json

Each scene's caption is in either language at random (`data.language`).
One model for both languages (the seed article's Chinese and English), on
the same scenes as `shapes32`. evaluate.py scores it on each language's
captions of the same test scenes (`test/en`, `test/zh`). Seed 0 (RESULTS.md
section 25): at 6,000 steps (`--config.train.steps=6000`) every checker
accuracy of the Chinese captions within 0.04 of the English ones (one-object
captions all right 1.00 / 1.00, both objects of two-object captions 0.54 /
0.51, held-out objects 0.72 / 0.72); at 4,000, two-object scenes 0.52 /
0.46 and held-out one-object captions 0.91 / 0.83.
"""

from dallex.config import default_config
from experiments.configs import shapes32


def get_config():
  c = shapes32.get_config()
  # The defaults' batch of 32 and 4,000 steps, the rates G 4e-4 with D
  # 1.6e-3, and no L1 toward the real images: what its numbers were measured
  # at (RESULTS.md 25), not shapes32's.
  default = default_config()
  c.train = default.train
  c.optim.g.lr, c.optim.d.lr = 4e-4, 1.6e-3
  c.loss.reconstruction = 0.0
  c.data.language = "mixed"
  c.sample.prompts = [
      "a small red circle on the left",
      "左边有一个红色的小圆形",
      "a large green circle in the bottom right and a small white square in the top left",
      "右下角有一个绿色的大圆形，左上角有一个白色的小正方形",
  ]
  return c
