"""Perceptual loss with a frozen, pretrained feature network loaded from a file.

The file is an ``.npz`` describing a plain VGG-style stack of 3x3 convolutions
with ReLU, the layout a VGG16/19 ``features`` trunk converts to directly:

    conv{i}/kernel  float [3, 3, C_in, C_out]   (HWIO; a PyTorch OIHW weight w
                                                 becomes w.transpose(2, 3, 1, 0))
    conv{i}/bias    float [C_out]
    pool_after      int [P]   indices i after whose ReLU a 2x2 average pool runs
    mean, std       float [3] (optional) input normalisation, for images in [0, 1]

The weights are constants: the loss trains the generator, never the network.

    net = load_feature_net("vgg16.npz")
    loss = perceptual_distance(net, fake_images, real_images)
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """kernels/biases: per conv layer; pool_after: layer indices; mean/std: [3]."""

  kernels: tuple[np.ndarray, ...]
  biases: tuple[np.ndarray, ...]
  pool_after: frozenset[int]
  mean: np.ndarray
  std: np.ndarray


def load_feature_net(path: str) -> FeatureNet:
  """Reads and checks a feature network file (format in the module docstring).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a readable npz or its arrays do not chain.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"feature network file {path!r} does not exist")
  try:
    with np.load(path) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # np.load raises several types for non-npz input.
    raise ValueError(
        f"feature network file {path!r} is not a readable .npz: {e}"
    ) from e
  kernels, biases, channels = [], [], 3
  while f"conv{len(kernels)}/kernel" in arrays:
    i = len(kernels)
    kernel, bias = arrays[f"conv{i}/kernel"], arrays.get(f"conv{i}/bias")
    if (
        kernel.ndim != 4
        or kernel.shape[:2] != (3, 3)
        or kernel.shape[2] != channels
    ):
      raise ValueError(
          f"{path}: conv{i}/kernel has shape {kernel.shape}, expected "
          f"(3, 3, {channels}, C_out)"
      )
    if bias is None or bias.shape != (kernel.shape[3],):
      raise ValueError(
          f"{path}: conv{i}/bias missing or not of shape ({kernel.shape[3]},)"
      )
    kernels.append(kernel.astype(np.float32))
    biases.append(bias.astype(np.float32))
    channels = kernel.shape[3]
  if not kernels:
    raise ValueError(
        f"{path}: no conv0/kernel array; see dallex.perceptual for the format"
    )
  mean = arrays.get("mean", np.zeros(3, np.float32)).astype(np.float32)
  std = arrays.get("std", np.ones(3, np.float32)).astype(np.float32)
  pool_after = frozenset(
      int(i) for i in arrays.get("pool_after", np.zeros(0, np.int64))
  )
  return FeatureNet(tuple(kernels), tuple(biases), pool_after, mean, std)


def feature_net_features(net: FeatureNet, images: jax.Array) -> list[jax.Array]:
  """images [B, H, W, 3] in [-1, 1] -> every conv layer's ReLU output."""
  x = ((images.astype(jnp.float32) + 1.0) / 2.0 - net.mean) / net.std
  feats = []
  for i, (kernel, bias) in enumerate(zip(net.kernels, net.biases)):
    x = jax.lax.conv_general_dilated(
        x,
        jnp.asarray(kernel),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = jax.nn.relu(x + bias)
    feats.append(x)
    if i in net.pool_after:
      b, h, w, c = x.shape
      x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return feats


def perceptual_distance(
    net: FeatureNet, images: jax.Array, targets: jax.Array
) -> jax.Array:
  """sum_l mean (n(f_l(x)) - n(f_l(y)))^2 with n the per-position unit-normalisation
  over channels (as in LPIPS, without its learned weights). Targets are constants.
  """
  targets = jax.lax.stop_gradient(targets)
  unit = lambda f: f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-6)
  total = jnp.float32(0.0)
  for fx, fy in zip(
      feature_net_features(net, images), feature_net_features(net, targets)
  ):
    total += jnp.mean(jnp.square(unit(fx) - unit(fy)))
  return total
