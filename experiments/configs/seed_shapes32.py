r"""The seed article's own architecture (GRU text encoder, GRU/linear generator,
MLP discriminator, BCE) on the same data as shapes32, for comparison.

    python -m experiments.train --config experiments/configs/seed_shapes32.py \
        --workdir runs/seed_shapes32

Its discriminator never sees the caption, as in the article: trained for
15 minutes of wall clock (`--config.train.steps=1000000
--config.train.max_minutes=15`) it draws pale blobs whatever the caption
says, in the asked-for cell at chance and almost never fully right
(docs/quality.md).
"""

from dallex.config import default_config


def get_config():
  c = default_config()
  c.model.arch = "seed"
  # The article's BCE without a penalty or an L1; its D has no embedding
  # heads, its G no grid.
  c.loss.update(
      adversarial="nonsaturating",
      gradient_penalty="none",
      contrastive_d=0.0,
      contrastive_g=0.0,
      layout=0.0,
      reconstruction=0.0,
  )
  # The rates its numbers were measured at (RESULTS.md section 18); the article names none.
  c.optim.g.lr, c.optim.d.lr = 1e-4, 4e-4
  # A few large matrices: concatenating their gradients into one vector each
  # step cost more than the fused update saved (RESULTS.md section 31). Runs
  # saved before 2026-12-04 kept them flattened: resume those with
  # --config.optim.flatten=True.
  c.optim.flatten = False
  return c
