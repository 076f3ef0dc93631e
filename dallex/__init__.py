"""dallex: text-to-image research in JAX/Flax.

    import dallex
    sampler = dallex.load("runs/shapes32")          # a trained run's EMA generator
    images = sampler.generate(["a small red circle on the left"], seed=0)
    dallex.sample(generator, params, ids, mask, key, z_dim=..., ca_dim=...)   # jitted, pure

``sample`` and ``load`` (``dallex.sampling``) are imported on first use, so
``import dallex.text`` stays light.
"""

import importlib


def __getattr__(name):
  if name in ("sample", "load"):
    return getattr(importlib.import_module("dallex.sampling"), name)
  raise AttributeError(f"module 'dallex' has no attribute {name!r}")
