r"""The seed article's PyTorch listing, fixed, timed beside dallex's `model.arch="seed"`.

    pip install -e '.[peer]' --extra-index-url https://download.pytorch.org/whl/cpu
    python -m experiments.torch_peer [--batch 64 --length 64 --emb 128 --hidden 256 --resolution 32]

Both sides train the same networks on the same random batch, in one process,
one after the other, on CPU: the article's GRU text encoder (its state after
the last real token), its generator (latent and noise -> Linear -> one GRU
step seeded with the projected latent -> Linear -> tanh pixels) and its MLP
discriminator on logits, BCE, two Adam optimisers; the fixes are
``dallex/models/seed.py``'s. A step is one discriminator update on real and
generated images, then one generator update through the same generated
images. dallex runs its own train step (``dallex.train.train_step``) with the
terms the article lacks switched off. Prints images/s of each and the ratio
dallex / PyTorch. PyTorch is an optional extra, never a dallex dependency.
Like every entry point here it first relaunches with glibc's huge-page
tunable (``dallex/hugepages.py``), so both sides run with it; the header says
which tunables were set.
"""

import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from dallex import hugepages
from dallex.text import VOCAB_SIZE
from experiments import benchmark
from experiments.configs import seed_shapes32

flags.DEFINE_integer("batch", 64, "Batch size.", lower_bound=1)
flags.DEFINE_integer("length", 64, "Tokens per caption.", lower_bound=2)
flags.DEFINE_integer("emb", 128, "Token embedding width.", lower_bound=1)
flags.DEFINE_integer("hidden", 256, "GRU width.", lower_bound=1)
flags.DEFINE_integer("resolution", 32, "Image side.", lower_bound=4)
flags.DEFINE_integer("z_dim", 64, "Noise width.", lower_bound=1)
FLAGS = flags.FLAGS  # also the benchmark's --steps and --repeats


def seed_config(batch, length, emb, hidden, resolution, z_dim):
  """``seed_shapes32`` at these sizes, without the two terms the article's
  step lacks (its discriminator reads no caption, so it has no mismatched
  pairs, and no feature matching)."""
  c = seed_shapes32.get_config()
  c.model.seed.update(emb_dim=emb, hidden_dim=hidden)
  c.model.z_dim = z_dim
  c.model.text.max_length = length
  c.data.resolution = resolution
  c.train.batch_size = batch
  c.loss.update(mismatch=False, feature_matching=0.0)
  return c


def random_batch(batch, length, resolution, seed=0) -> dict:
  """Random images in [-1, 1] and byte ids with 8..length real tokens each."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min(8, length), length + 1, batch)
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids = np.where(mask, rng.integers(1, VOCAB_SIZE, (batch, length)), 0)
  image = rng.uniform(-1, 1, (batch, resolution, resolution, 3))
  return {
      "image": image.astype(np.float32),
      "ids": ids.astype(np.int32),
      "mask": mask,
  }


def dallex_steps(config, batch, steps):
  """A call that runs ``steps`` of dallex's compiled train step on ``batch``
  on one device and waits for them (compiled and warmed up already)."""
  step, state, batch, _ = benchmark._train_setup(
      config, jax.devices()[:1], batch
  )
  run, _ = benchmark._chain(step, state, batch, steps)
  run()
  return run


def torch_steps(config, data, steps):
  """A call that runs ``steps`` of the article's listing, fixed, in PyTorch,
  at ``config``'s sizes and learning rates on the host batch ``data``
  (warmed up already)."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  emb, hidden = config.model.seed.emb_dim, config.model.seed.hidden_dim
  z_dim, batch = config.model.z_dim, config.train.batch_size
  pixels = config.data.resolution**2 * 3

  class TextEncoder(nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(VOCAB_SIZE, emb)
      self.gru = nn.GRU(emb, hidden, batch_first=True)

    def forward(self, ids, lengths):
      # The state after each caption's last real token [B, H], read from the
      # outputs over the padded sequence: the same values as a packed
      # sequence's final state, and the faster of the two in PyTorch here.
      outputs, _ = self.gru(self.embedding(ids))
      return outputs[torch.arange(ids.shape[0]), lengths - 1]

  class Generator(nn.Module):

    def __init__(self):
      super().__init__()
      self.text = TextEncoder()
      self.latent_to_hidden = nn.Linear(hidden + z_dim, hidden)
      self.gru = nn.GRUCell(hidden, hidden)
      self.hidden_to_image = nn.Linear(hidden, pixels)

    def forward(self, ids, lengths, z):
      h = self.latent_to_hidden(torch.cat([self.text(ids, lengths), z], -1))
      return torch.tanh(self.hidden_to_image(self.gru(h, h)))

  discriminator = nn.Sequential(
      nn.Linear(pixels, 512),
      nn.LeakyReLU(0.2),
      nn.Linear(512, 256),
      nn.LeakyReLU(0.2),
      nn.Linear(256, 1),
  )
  generator = Generator()
  g, d = config.optim.g, config.optim.d
  g_opt = torch.optim.Adam(
      generator.parameters(), lr=g.lr, betas=(g.b1, g.b2), eps=g.eps
  )
  d_opt = torch.optim.Adam(
      discriminator.parameters(), lr=d.lr, betas=(d.b1, d.b2), eps=d.eps
  )
  torch.manual_seed(0)
  ids = torch.from_numpy(data["ids"].astype(np.int64))
  lengths = torch.from_numpy(data["mask"].sum(1))
  real = torch.from_numpy(data["image"]).reshape(batch, -1)
  ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)

  def step():
    fake = generator(ids, lengths, torch.randn(batch, z_dim))
    d_loss = F.binary_cross_entropy_with_logits(
        discriminator(real), ones
    ) + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros)
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()

  def run():
    for _ in range(steps):
      step()

  run()
  return run


def main(argv):
  del argv
  config = seed_config(
      FLAGS.batch,
      FLAGS.length,
      FLAGS.emb,
      FLAGS.hidden,
      FLAGS.resolution,
      FLAGS.z_dim,
  )
  batch = random_batch(FLAGS.batch, FLAGS.length, FLAGS.resolution)
  matmul = benchmark.matmul_flops_per_s(np.float32)
  print(
      f"the seed article's model, batch {FLAGS.batch}, {FLAGS.length} tokens, "
      f"widths {FLAGS.emb}/{FLAGS.hidden}, {FLAGS.resolution} px; "
      f"{time.strftime('%Y-%m-%d %H:%M')}; {jax.devices()[0].device_kind}, "
      f"float32 matmul {matmul / 1e9:.0f} GFLOP/s; GLIBC_TUNABLES "
      f"{os.environ.get('GLIBC_TUNABLES') or 'unset'} (both sides)"
  )
  ours = dallex_steps(config, batch, FLAGS.steps)
  try:
    import torch
  except ImportError:
    seconds = benchmark._median_time(ours, FLAGS.repeats)
    print(f"  dallex   {FLAGS.batch * FLAGS.steps / seconds:8.0f} images/s")
    raise SystemExit(
        "experiments.torch_peer needs PyTorch for its other half: pip install "
        "-e '.[peer]' --extra-index-url https://download.pytorch.org/whl/cpu"
    ) from None
  theirs = torch_steps(config, batch, FLAGS.steps)
  # Alternated, so that a shared machine's drift falls on both alike.
  times = {"dallex": [], "PyTorch": []}
  for _ in range(FLAGS.repeats):
    for name, run in (("dallex", ours), ("PyTorch", theirs)):
      times[name] += benchmark._times(run, 1)
  rate = {
      k: FLAGS.batch * FLAGS.steps / statistics.median(v)
      for k, v in times.items()
  }
  print(f"  dallex   {rate['dallex']:8.0f} images/s")
  print(
      f"  PyTorch  {rate['PyTorch']:8.0f} images/s (torch "
      f"{torch.__version__}, {torch.get_num_threads()} threads)"
  )
  print(f"  dallex / PyTorch: {rate['dallex'] / rate['PyTorch']:.2f}")


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
