r"""The default model on the built-in shapes at 32 px: what `make demo` trains.

    python -m experiments.train --config experiments/configs/shapes32.py --workdir runs/shapes32
    python -m experiments.evaluate --workdir runs/shapes32 --num 2000 --out runs/shapes32/eval.json

Budget: 5 to 11 minutes on 2 CPU cores, as fast as the VM runs that hour
(800 steps of 32 images at 1-3.6 steps/s after 15-40 s of compiling). It
reaches objects in the right cell about 70% of the time, but colour, shape and
size only partly, and every attribute of an object right for about 6% of
one-object captions: far from the quality goal. Do not simply train longer:
it improves to step 1,600 and diverges after about 1,700. RESULTS.md has the
measurements, the curve to 2,400 steps and the ablations.
"""

from dallex.config import default_config


def get_config():
  c = default_config()
  c.data.name = "dallex_shapes"
  c.data.resolution = 32
  c.model.text.update(max_length=96, width=64, depth=2, heads=4)
  c.model.discriminator.text.update(max_length=96, width=32, depth=1, heads=2)
  c.model.generator.update(style_dim=128, width=64, depth=2, heads=4, base_channels=64,
                           min_channels=16)
  c.model.discriminator.update(base_channels=16, max_channels=128, hidden=128, embed_dim=64)
  # Two time scales: at 1e-3 for both the generator collapsed to black within
  # 20 steps, before D could tell a black image from a shapes image.
  c.optim.g.lr = 1e-4
  c.optim.d.lr = 4e-4
  c.optim.g.b2 = c.optim.d.b2 = 0.99
  c.train.update(steps=800, batch_size=32, checkpoint_every=400, log_every=50,
                 sample_every=400)
  c.sample.num_per_prompt = 6
  return c
