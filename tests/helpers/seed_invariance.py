"""Draws images of one tiny random generator (trained-like parameters, so that
the noise matters) in several ways and saves them to an npz.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the test does):
the same captions and seed in one batch of 8, in batches of 1 and of 3, sharded
over 8 devices, and with another seed.
"""

import sys
import warnings

warnings.filterwarnings("ignore")
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, "tests")
from conftest import tiny_config, trained_like  # noqa: E402
from dallex import noise  # noqa: E402
from dallex.models import build_models  # noqa: E402
from dallex.sampling import Sampler  # noqa: E402
from dallex.sampling import sample  # noqa: E402

assert jax.device_count() == 8, jax.devices()
config = tiny_config()
generator, _ = build_models(config.model, config.data.resolution)
captions = [
    f"a {s} {c} circle on the left"
    for s in ("small", "large")
    for c in ("red", "green", "blue", "white")
]
sampler = Sampler(config, generator, None, 0)
ids, mask = sampler.tokenizer.encode(captions)
z, eps = noise.latents(
    jax.random.key(0), np.arange(8), config.model.z_dim, config.model.ca_dim
)
with jax.threefry_partitionable(False):
  sampler.params = trained_like(
      jax.jit(generator.init)(jax.random.key(1), ids, mask, z, eps)
  )

kwargs = dict(z_dim=config.model.z_dim, ca_dim=config.model.ca_dim)
one_device = sample(
    generator, sampler.params, ids, mask, jax.random.key(0), **kwargs
)
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, PartitionSpec("data"))
sharded = sample(
    generator,
    sampler.params,
    jax.device_put(ids, rows),
    jax.device_put(mask, rows),
    jax.random.key(0),
    **kwargs,
)
assert len(sharded.sharding.device_set) == 8
np.savez(
    sys.argv[1],
    one_device=np.asarray(one_device),
    sharded=np.asarray(sharded),
    batch8=sampler.generate(captions, seed=0, batch_size=8),
    batch3=sampler.generate(captions, seed=0, batch_size=3),
    batch1=sampler.generate(captions, seed=0, batch_size=1),
    seed1=sampler.generate(captions, seed=1, batch_size=8),
    repeated=sampler.generate(
        captions[:1], seed=0, num_per_prompt=4, batch_size=8
    ),
)
