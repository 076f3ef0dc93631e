"""InceptionV3 as FID uses it (pool3, 2048 features), in Flax, with weights from a file.

The network is the TensorFlow FID graph's Inception (the variant pytorch-fid
ports): torchvision's InceptionV3 layout, with average pools that do not count
padding and a max pool in the last block's pooling branch. dallex ships no
weights (nothing can be downloaded where it is tested); convert the standard
public ones once, with PyTorch, into a plain ``.npz`` of the state dict:

    # pip install torch; the weights pytorch-fid uses:
    # https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    import numpy as np, torch
    state = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("inception_fid.npz", **{k: v.numpy() for k, v in state.items()})

then ``load_inception("inception_fid.npz")``. Names are the state dict's
(``Mixed_5b.branch1x1.conv.weight``, ``...bn.running_mean``); the classifier
(``fc.*``) is not needed and is ignored.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = 2048
INPUT_SIZE = 299


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (running statistics, eps 1e-3), ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(
        self.features,
        self.kernel,
        strides=self.strides,
        use_bias=False,
        padding=[(p, p) for p in self.padding],
        name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool(x):
  return nn.avg_pool(
      x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False
  )


def _max_pool(x, stride=2, pad=0):
  return nn.max_pool(
      x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad))
  )


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """The last two blocks; FID's graph max-pools in the second one's pool branch."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
        [
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ],
        axis=-1,
    )
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
        [
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ],
        axis=-1,
    )
    pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """uint8 or [0, 255] images [B, H, W, 3] -> pool3 features [B, 2048] (float32).

  Images are resized bilinearly to ``input_size`` (299 for FID; smaller sizes,
  at least 75, only for tests) and scaled to [-1, 1].
  """

  input_size: int = INPUT_SIZE

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images, jnp.float32)
    x = jax.image.resize(
        x,
        (x.shape[0], self.input_size, self.input_size, 3),
        "bilinear",
        antialias=False,
    )
    x = x / 127.5 - 1.0
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (
        ("Mixed_6b", 128),
        ("Mixed_6c", 160),
        ("Mixed_6d", 160),
        ("Mixed_6e", 192),
    ):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# Flax leaf (collection, name) <-> PyTorch state-dict suffix.
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
  return ".".join(path[:-1] + (_LEAVES[(collection, path[-1])],))


def to_state_dict(variables: Any) -> dict[str, np.ndarray]:
  """Flax variables -> a PyTorch-layout state dict (OIHW kernels): the inverse of
  ``from_state_dict``, for round-trip tests and exporting."""
  out = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(p.key for p in path)
      value = np.asarray(leaf)
      out[_torch_name(collection, keys)] = (
          value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
      )
  return out


def from_state_dict(
    state: dict[str, np.ndarray], template: Any, source: str = "state dict"
) -> Any:
  """A PyTorch-layout state dict -> Flax variables shaped like ``template``.

  Raises:
    ValueError: naming ``source`` and every missing or misshapen entry.
  """
  problems = []

  def convert(collection, path, leaf):
    name = _torch_name(collection, tuple(p.key for p in path))
    if name not in state:
      problems.append(f"missing {name}")
      return leaf
    value = np.asarray(state[name], np.float32)
    if value.ndim == 4:  # PyTorch OIHW -> Flax HWIO
      value = value.transpose(2, 3, 1, 0)
    if value.shape != leaf.shape:
      layout = " (as HWIO)" if value.ndim == 4 else ""
      problems.append(
          f"{name} has shape {value.shape}{layout}, expected {leaf.shape}"
      )
      return leaf
    return jnp.asarray(value)

  variables = {
      c: jax.tree_util.tree_map_with_path(lambda p, x, c=c: convert(c, p, x), t)
      for c, t in template.items()
  }
  if problems:
    raise ValueError(
        f"{source} is not an FID InceptionV3 state dict: "
        + "; ".join(problems[:10])
        + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
    )
  return variables


def load_inception(
    path: str, input_size: int = INPUT_SIZE
) -> Callable[[np.ndarray], jax.Array]:
  """A jitted feature function images [B, H, W, 3] (uint8) -> [B, 2048] from an .npz
  state dict (see the module docstring for how to make one)."""
  try:
    with np.load(path) as f:
      state = dict(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"Inception weights {path!r} do not exist"
    ) from None
  except (ValueError, OSError) as e:
    raise ValueError(
        f"Inception weights {path!r} are not a readable .npz: {e}"
    ) from None
  model = InceptionV3(input_size)
  template = jax.eval_shape(
      model.init,
      jax.random.key(0),
      jnp.zeros((1, input_size, input_size, 3), jnp.uint8),
  )
  variables = from_state_dict(state, template, source=repr(path))
  return jax.jit(lambda images: model.apply(variables, images))
