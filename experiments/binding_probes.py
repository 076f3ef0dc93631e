"""Where a two-object caption's binding is lost: linear probes on a trained
generator's own features.

For each object of a two-object caption two vectors are read from the
generator: the text token that ends the object's phrase (its text encoder's
output) and the grid token under the object's cell (its grid Transformer's
output, after the cross-attention to the caption). A ridge-regression probe,
fit on three quarters of the objects and scored on the rest, predicts from
each vector the object's own colour and the other object's colour. Features
that hold the scene's two colours as a bag read both equally, at about 0.5
each when they know the pair (which of the two is whose is not in them);
features that bind each colour to its object read the own colour well above 0.5.

``grid_token_contrast`` says how much there is to read: the fraction of the
grid Transformer's output variance that differs between the tokens of one
image (the rest is shared by all of them). A grid that tells its cells apart
needs a good part of it; a trained `shapes32` run had 0.0009 (RESULTS.md
section 16).

``train_front_end`` asks the complementary question: trained directly to
name the colour under each object, can a fresh copy of the same
caption-to-grid path learn the binding at all?

One experiment's probes (RESULTS.md sections 13 and 16), run by
``python -m experiments.probe_binding``; not part of the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dallex import noise
from dallex.data import shapes
from dallex.models.layers import Norm, TransformerStack
from dallex.models.text_encoder import TextEncoder
from dallex.text import EOS_ID, ByteTokenizer


def ridge_probe_accuracy(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    train_fraction: float = 0.75,
    l2: float = 1e-2,
) -> float:
  """Held-out accuracy of a linear probe: W = argmin |[x, 1] W - onehot(labels)|^2 + l2 |W|^2
  on the first ``train_fraction`` of the rows, argmax of [x, 1] W on the rest.

  Args:
    x: [N, D] features; labels: int [N] in [0, num_classes).
  """
  x = np.asarray(x, np.float64)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.shape != (len(x),):
    raise ValueError(
        f"x must be [N, D] and labels [N], got {x.shape} and {labels.shape}"
    )
  split = int(len(x) * train_fraction)
  if not 0 < split < len(x):
    raise ValueError(
        f"train_fraction {train_fraction} leaves no train or no test rows "
        f"of {len(x)}"
    )
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  target = np.eye(num_classes)[labels]
  a, b = xb[:split], target[:split]
  w = np.linalg.solve(a.T @ a + l2 * np.eye(xb.shape[1]), a.T @ b)
  return float(np.mean((xb[split:] @ w).argmax(axis=1) == labels[split:]))


def phrase_end_positions(caption: str) -> list[int]:
  """Token index of each object phrase's last byte in ``[BOS, bytes..., EOS]``.

  Phrases are joined by `` and `` (``shapes.caption``); BOS shifts bytes by one.
  """
  ends, start = [], 0
  for phrase in caption.split(" and "):
    start += len(phrase.encode())
    ends.append(start)  # last byte's index + 1 for BOS
    start += len(" and ")
  return ends


def grid_position(cell: str, grid: int) -> int:
  """Row-major index of the grid token whose square holds ``cell``'s centre."""
  x, y = shapes.cell_center(cell)
  return min(int(y * grid), grid - 1) * grid + min(int(x * grid), grid - 1)


def binding_probes(
    sampler, captions: Sequence[str], seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
  """Probe accuracies for the objects of the two-object captions among ``captions``.

  Args:
    sampler: a ``dallex.sampling.Sampler`` holding a ``dallex``-architecture generator.
    captions: ``dallex_shapes`` captions (``shapes.parse_caption`` reads their
      objects, in caption order); one-object captions are skipped.

  Returns:
    ``{text,grid}_{own,other}_colour`` probe accuracies, ``num_objects`` and
    ``grid_token_contrast`` (see the module docstring).
  """
  if sampler.config.model.arch != "dallex":
    raise ValueError(
        f"binding probes read the dallex generator's grid; this run's "
        f"model.arch is {sampler.config.model.arch!r}"
    )
  pairs = [(c, o) for c in captions if len(o := shapes.parse_caption(c)) == 2]
  if len(pairs) < 8:
    raise ValueError(
        f"need at least 8 two-object captions to fit and score a probe, "
        f"got {len(pairs)}"
    )
  model = sampler.config.model
  grid = model.generator.grid
  keep = lambda module, _: module.name in (
      "grid_norm",
      "text_encoder",
      "transformer",
  )

  @jax.jit
  def features(params, ids, mask, index):
    z, eps = noise.latents(
        jax.random.key(seed), index, model.z_dim, model.ca_dim, 1.0
    )
    _, state = sampler.generator.apply(
        params,
        ids,
        mask,
        z,
        eps,
        capture_intermediates=keep,
        mutable=["intermediates"],
    )
    inter = state["intermediates"]
    return (
        inter["text_encoder"]["__call__"][0].tokens,
        inter["grid_norm"]["__call__"][0],
        inter["transformer"]["__call__"][0],
    )

  text_x, grid_x, grid_out, own, other = [], [], [], [], []
  colours = list(shapes.COLOURS)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start : start + batch_size]
    ids, mask = sampler.tokenizer.encode(
        [c for c, _ in chunk] + [chunk[-1][0]] * (batch_size - len(chunk))
    )
    tokens, cells, out = map(
        np.asarray,
        features(
            sampler.params, ids, mask, np.arange(start, start + batch_size)
        ),
    )
    grid_out.append(out[: len(chunk)].astype(np.float64))
    for row, (caption, objects) in enumerate(chunk):
      ends = phrase_end_positions(caption)
      if ends[-1] + 1 >= ids.shape[1] or ids[row, ends[-1] + 1] != EOS_ID:
        raise ValueError(
            f"caption {caption!r} does not fit the text encoder's max_length "
            f"{ids.shape[1]} (or its phrases are not joined by ' and ')"
        )
      for k, end in enumerate(ends):
        text_x.append(tokens[row, end])
        grid_x.append(cells[row, grid_position(objects[k]["cell"], grid)])
        own.append(colours.index(objects[k]["colour"]))
        other.append(colours.index(objects[1 - k]["colour"]))
  grid_out = np.concatenate(grid_out)  # [N, G*G, D]
  within = np.square(grid_out - grid_out.mean(1, keepdims=True)).sum()
  out = {
      "num_objects": len(own),
      "grid_token_contrast": float(
          within / np.square(grid_out - grid_out.mean((0, 1))).sum()
      ),
  }
  for name, x in (("text", text_x), ("grid", grid_x)):
    for which, y in (("own", own), ("other", other)):
      out[f"{name}_{which}_colour"] = ridge_probe_accuracy(
          np.stack(x), np.array(y), len(colours)
      )
  return out


class FrontEnd(nn.Module):
  """The generator's path from caption to grid tokens (its text encoder, then
  the grid Transformer cross-attending to the caption), without the style
  vector, and a head that names the colour drawn under each grid token
  (``num_classes`` logits)."""

  text_encoder: TextEncoder
  grid: int
  width: int
  depth: int
  heads: int
  mlp_ratio: int
  num_classes: int

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids, mask [B, L] -> logits [B, G*G, num_classes]."""
    text = self.text_encoder(ids, mask)
    cells = self.param(
        "grid_embed",
        nn.initializers.normal(0.02),
        (self.grid * self.grid, self.width),
    )
    x = jnp.broadcast_to(cells, (ids.shape[0], *cells.shape))
    context = nn.Dense(self.width, name="text_to_context")(text.tokens)
    x = TransformerStack(
        self.depth,
        self.heads,
        self.mlp_ratio,
        cross_attention=True,
        name="transformer",
    )(x, None, context, mask)
    return nn.Dense(self.num_classes, name="head")(Norm(name="grid_norm")(x))


def grid_colour_labels(
    objects: Sequence[shapes.ShapeObject], grid: int
) -> np.ndarray:
  """int [G*G]: the colour index of the object whose cell holds each grid
  token's centre, ``len(COLOURS)`` where there is none."""
  colours = list(shapes.COLOURS)
  by_cell = {o.cell: colours.index(o.colour) for o in objects}
  third = lambda i: min(int((i + 0.5) / grid * 3), 2)
  return np.array(
      [
          by_cell.get(shapes.CELLS[3 * third(r) + third(c)], len(colours))
          for r in range(grid)
          for c in range(grid)
      ]
  )


def _two_object_batch(
    rng: np.random.Generator, tokenizer: ByteTokenizer, grid: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  scenes = []
  while len(scenes) < size:
    scene = shapes.sample_scene(rng, 32)
    if len(scene) == 2:
      scenes.append(scene)
  ids, mask = tokenizer.encode([shapes.caption(s) for s in scenes])
  return ids, mask, np.stack([grid_colour_labels(s, grid) for s in scenes])


def train_front_end(
    model: ml_collections.ConfigDict,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    eval_every: int = 250,
    seed: int = 0,
) -> list[tuple[int, float]]:
  """Trains a fresh ``FrontEnd`` of ``model``'s sizes (``config.model``) to name
  each grid token's colour in two-object scenes, directly supervised.

  Tells whether the architecture can bind colours to places at all when asked
  to, apart from whether the adversarial game asks. Trained and scored on the
  grid tokens that hold an object. Returns (step, accuracy on 512 other scenes).
  """
  text, g = model.text, model.generator
  encoder = TextEncoder(**text, scan=True, remat=False, dtype=jnp.float32)
  net = FrontEnd(
      encoder,
      g.grid,
      g.width,
      g.depth,
      g.heads,
      g.mlp_ratio,
      len(shapes.COLOURS),
  )
  tokenizer = ByteTokenizer(text.max_length)
  rng = np.random.default_rng(seed)
  test_ids, test_mask, test_labels = _two_object_batch(
      np.random.default_rng(seed + 1), tokenizer, g.grid, 512
  )
  params = net.init(jax.random.key(seed), test_ids[:1], test_mask[:1])
  opt = optax.adam(lr)
  state = opt.init(params)

  def loss(p, ids, mask, labels):
    # Empty tokens name no colour: left out.
    held = labels != len(shapes.COLOURS)
    xent = optax.softmax_cross_entropy_with_integer_labels(
        net.apply(p, ids, mask), jnp.where(held, labels, 0)
    )
    return (xent * held).sum() / held.sum()

  @jax.jit
  def step(p, s, ids, mask, labels):
    grads = jax.grad(loss)(p, ids, mask, labels)
    updates, s = opt.update(grads, s)
    return optax.apply_updates(p, updates), s

  @jax.jit
  def accuracy(p):
    right = net.apply(p, test_ids, test_mask).argmax(-1) == test_labels
    held = test_labels != len(shapes.COLOURS)
    return (right & held).sum() / held.sum()

  curve = []
  for i in range(steps + 1):
    if i % eval_every == 0 or i == steps:
      curve.append((i, float(accuracy(params))))
    if i < steps:
      params, state = step(
          params, state, *_two_object_batch(rng, tokenizer, g.grid, batch_size)
      )
  return curve
