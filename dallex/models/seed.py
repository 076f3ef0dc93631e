"""The seed article's own architecture, kept as a baseline and fixed so it trains.

The article's PyTorch listing: a GRU text encoder whose final hidden state is
the latent; a generator that maps the latent through a Linear layer, one GRU
step and a Linear layer to pixels; an MLP discriminator with a sigmoid and BCE.
As printed it does not run or train, and these are the fixes:

* ``class DALL-E`` is a syntax error: here the parts are separate modules.
* Shape bug: ``nn.GRU`` returns its hidden state as [layers, B, H], which was
  fed on as if it were [B, H]; here the encoder returns the last real token's
  state [B, H] (``seq_lengths``, so padding does not change it either).
* One Adam over all parameters, with both losses backpropagated into both
  networks, lets each network's loss move the other; here the generator and
  discriminator are two parameter trees with their own optimisers, as in every
  dallex model (the train step does that, not this file).
* The generator's GRU ran one step from a zero state, so its recurrent weights
  multiplied zeros and never learned; the projected latent now seeds the state.
* The generator had no noise input, so one caption could only ever give one
  image; ``z`` is concatenated to the latent.
* Pixels came out of a Linear layer unbounded; a tanh maps them to [-1, 1].
* Sigmoid + BCELoss is numerically fragile; the discriminator returns logits and
  the train step uses the same BCE on logits (``adversarial="nonsaturating"``).

The discriminator stays unconditional, as in the article: it never sees the
caption, so nothing but the generator's input ties images to text. That is the
article's design and the reason to compare against it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dallex.models.conditioning import Conditioning
from dallex.models.discriminator import Judgement
from dallex.models.generator import GeneratorOutput
from dallex.models.text_encoder import TextFeatures


def _gru_scan(x, w_in, b_in, w_hidden, b_n, keep_gates: bool):
  """The GRU's loop from a zero state: its states [L, B, H], and with
  ``keep_gates`` also its r, z, n and recurrent n product, each [L, B, H]."""
  h = w_hidden.shape[0]

  def step(state, x_t):
    g_in, g_h = x_t @ w_in + b_in, state @ w_hidden
    r = jax.nn.sigmoid(g_in[:, :h] + g_h[:, :h])
    z = jax.nn.sigmoid(g_in[:, h : 2 * h] + g_h[:, h : 2 * h])
    hn = g_h[:, 2 * h :] + b_n
    n = jnp.tanh(g_in[:, 2 * h :] + r * hn)
    state = (1.0 - z) * n + z * state
    return state, (state, r, z, n, hn) if keep_gates else state

  h0 = jnp.zeros((x.shape[1], h), jnp.result_type(x, w_hidden))
  return jax.lax.scan(step, h0, x)[1]


@jax.custom_vjp
def gru_states(
    x: jax.Array,
    w_in: jax.Array,
    b_in: jax.Array,
    w_hidden: jax.Array,
    b_n: jax.Array,
) -> jax.Array:
  """A GRU from a zero state over x [L, B, E] -> its states [L, B, H].

  ``w_in`` [E, 3H] and ``b_in`` [3H] are the r, z, n input products side by
  side, ``w_hidden`` [H, 3H] the recurrent ones, ``b_n`` [H] the recurrent n
  bias (inside r's product, as in ``nn.GRUCell``). Its gradient is written
  out because autodiff's loop adds each step's weight gradients, two small
  products and two sums per step; here the loop carries only the state's
  gradient, and the weight gradients are one product each over all L x B
  rows after it, as cuDNN's GRU does.
  """
  return _gru_scan(x, w_in, b_in, w_hidden, b_n, keep_gates=False)


def _gru_forward(x, w_in, b_in, w_hidden, b_n):
  states, r, z, n, hn = _gru_scan(x, w_in, b_in, w_hidden, b_n, True)
  return states, (x, w_in, b_in, w_hidden, b_n, states, r, z, n, hn)


def _gru_backward(residuals, d_states):
  x, w_in, b_in, w_hidden, b_n, states, r, z, n, hn = residuals
  h = w_hidden.shape[0]
  previous = jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])

  def step(d_state, t):
    d_out, prev, r, z, n, hn = t
    d_state = d_state + d_out
    # Gradients of the pre-activations of r, z and n.
    d_n = d_state * (1.0 - z) * (1.0 - n * n)
    d_z = d_state * (prev - n) * z * (1.0 - z)
    d_r = d_n * hn * r * (1.0 - r)
    d_hidden_product = jnp.concatenate([d_r, d_z, d_n * r], axis=1)
    d_prev = d_state * z + d_hidden_product @ w_hidden.T
    return d_prev, jnp.concatenate([d_r, d_z, d_n], axis=1)

  _, d_in = jax.lax.scan(
      step,
      jnp.zeros_like(states[0]),
      (d_states, previous, r, z, n, hn),
      reverse=True,
  )  # [L, B, 3H]: the gradient of the input products
  d_hidden = jnp.concatenate([d_in[..., : 2 * h], d_in[..., 2 * h :] * r], -1)
  cast = lambda g, like: g.astype(like.dtype)
  return (
      cast(d_in @ w_in.T, x),
      cast(jnp.einsum("lbe,lbg->eg", x, d_in), w_in),
      cast(d_in.sum((0, 1)), b_in),
      cast(jnp.einsum("lbh,lbg->hg", previous, d_hidden), w_hidden),
      cast(d_hidden[..., 2 * h :].sum((0, 1)), b_n),
  )


gru_states.defvjp(_gru_forward, _gru_backward)


class SequenceGRU(nn.Module):
  """``nn.RNN(nn.GRUCell(features))`` over a time-major sequence: the same
  gates, parameters and initialisation, with each step's three input
  products taken as one [B, E] x [E, 3H] product and its three recurrent
  ones as one [B, H] x [H, 3H], which XLA:CPU runs 1.3-1.5x faster than three
  of a third the width (RESULTS.md section 31)."""

  features: int

  @nn.compact
  def __call__(
      self, x: jax.Array, lengths: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """x [L, B, E], lengths int [B] -> (the state after each sequence's last
    real step [B, H], the states after every step [L, B, H])."""
    h = self.features
    inputs = [nn.Dense(h, name=n) for n in ("ir", "iz", "in")]
    recurrent = functools.partial(
        nn.Dense, h, use_bias=False, kernel_init=nn.initializers.orthogonal()
    )
    hidden = [
        recurrent(name="hr"),
        recurrent(name="hz"),
        recurrent(name="hn", use_bias=True),
    ]
    h0 = jnp.zeros((x.shape[1], h), x.dtype)
    # Called once so that init creates the parameters; the loop multiplies
    # by them, concatenated, directly.
    for layer in inputs:
      layer(x[0])
    for layer in hidden:
      layer(h0)
    param = lambda layers, name: [m.variables["params"][name] for m in layers]
    w_in = jnp.concatenate(param(inputs, "kernel"), axis=1)
    b_in = jnp.concatenate(param(inputs, "bias"))
    w_hidden = jnp.concatenate(param(hidden, "kernel"), axis=1)
    b_n = hidden[2].variables["params"]["bias"]

    states = gru_states(x, w_in, b_in, w_hidden, b_n)
    return states[lengths - 1, jnp.arange(x.shape[1])], states


class SeedTextEncoder(nn.Module):
  """Embedding + GRU; the sentence vector is the GRU state after the last real token."""

  vocab_size: int
  emb_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> TextFeatures:
    # Time-major from the lookup on, so the loop reads contiguous steps.
    x = nn.Embed(self.vocab_size, self.emb_dim, name="embedding")(ids.T)
    lengths = mask.sum(axis=1).astype(jnp.int32)
    # Named as nn.RNN(nn.GRUCell(...)) names its cell: checkpoints saved
    # before it was written load.
    hidden, states = SequenceGRU(self.hidden_dim, name="GRUCell_0")(x, lengths)
    return TextFeatures(states.transpose(1, 0, 2), mask, hidden)


class SeedGenerator(nn.Module):
  """The article's ImageGenerator: latent -> Linear -> one GRU step -> Linear -> pixels.

  Same call signature as ``Generator``; ``ca_eps`` is unused (no conditioning
  augmentation in the article), and the KL term is exactly zero.
  """

  text_encoder: SeedTextEncoder
  resolution: int
  z_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(
      self, ids: jax.Array, mask: jax.Array, z: jax.Array, ca_eps: jax.Array
  ) -> GeneratorOutput:
    del ca_eps
    text = self.text_encoder(ids, mask)
    latent = jnp.concatenate([text.sentence, z], axis=-1)
    hidden = nn.Dense(self.hidden_dim, name="latent_to_hidden")(latent)
    # The projected latent is both the state and the input of the one GRU step.
    _, out = nn.GRUCell(self.hidden_dim, name="gru")(hidden, hidden)
    pixels = nn.Dense(
        self.resolution * self.resolution * 3, name="hidden_to_image"
    )(out)
    images = jnp.tanh(pixels).reshape(-1, self.resolution, self.resolution, 3)
    zeros = jnp.zeros((ids.shape[0], 1), jnp.float32)
    return GeneratorOutput(
        images, text, Conditioning(text.sentence, zeros, zeros)
    )


class SeedDiscriminator(nn.Module):
  """The article's MLP discriminator (512 -> 256 -> 1, LeakyReLU 0.2), returning a
  logit. Same methods as ``Discriminator``; it ignores the text."""

  resolution: int

  def setup(self):
    self.fc_0 = nn.Dense(512)
    self.fc_1 = nn.Dense(256)
    self.fc_2 = nn.Dense(1)

  def encode_text(self, ids: jax.Array, mask: jax.Array) -> TextFeatures:
    """The article's discriminator reads no text: empty [B, L, 0] tokens and [B, 0] sentence."""
    b, length = ids.shape
    return TextFeatures(
        jnp.zeros((b, length, 0), jnp.float32),
        mask,
        jnp.zeros((b, 0), jnp.float32),
    )

  def features(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images [B, R, R, 3] -> (h [B, 256], [both hidden layers])."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32)
    f1 = nn.leaky_relu(self.fc_0(x), 0.2)
    h = nn.leaky_relu(self.fc_1(f1), 0.2)
    return h, [f1, h]

  def heads(self, h: jax.Array, text: TextFeatures) -> Judgement:
    """The image's (unconditional) logit as a Judgement with empty embeddings."""
    del text
    logit = self.fc_2(h)[:, 0]
    empty = jnp.zeros((logit.shape[0], 0), jnp.float32)
    return Judgement(logit, logit, empty, empty, jnp.float32(1.0))

  def __call__(
      self, images: jax.Array, ids: jax.Array, mask: jax.Array
  ) -> tuple[Judgement, list[jax.Array]]:
    h, feats = self.features(images)
    return self.heads(h, self.encode_text(ids, mask)), feats
