r"""The seed article's own architecture (GRU text encoder, GRU/linear generator,
MLP discriminator, BCE) on the same data and budget as shapes32, for comparison.

    python -m experiments.train --config experiments/configs/seed_shapes32.py --workdir runs/seed_shapes32

Its discriminator never sees the caption, as in the article; expect images
that look like shapes but follow the caption far less than shapes32's.
"""

from experiments.configs import shapes32


def get_config():
  c = shapes32.get_config()
  c.model.arch = "seed"
  c.loss.update(adversarial="nonsaturating", gradient_penalty="none", contrastive_d=0.0,
                contrastive_g=0.0, kl=0.0, layout=0.0)  # the article's generator has no grid
  # The rates its README numbers were measured at (shapes32's until RESULTS.md
  # section 18); the article names none.
  c.optim.g.lr, c.optim.d.lr = 1e-4, 4e-4
  return c
