"""The train state and one pure train step, with its jit-sharded and pmap forms.

    state, metrics = train_step(state, batch)   # D update(s), G update, EMA

Randomness: step t uses fold_in(seed_key, t); the step's one generator pass
folds in ``d_steps``, and the d-th discriminator update (d >= 1, when
``d_steps > 1``) its own d; every example's noise then comes from its global
index in the batch (``dallex.noise``), so the single-device, jit-sharded and
pmap steps draw the same numbers.

Non-finite guard: if any loss or gradient of a step is not finite, the step
leaves every parameter and optimiser state unchanged, ``nonfinite`` counts the
run of such steps (reset by a good one) and ``nonfinite_total`` all of them.
"""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dallex.models import cpu_kernels
from dallex.objective import GanObjective, init_params

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes: a pytree of arrays."""

  step: jax.Array
  g_params: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  ema_params: Any
  nonfinite: jax.Array  # consecutive non-finite steps
  nonfinite_total: jax.Array  # all non-finite steps


def make_optimizer(opt, flatten: bool = True) -> optax.GradientTransformation:
  """Adam with linear warmup to a constant rate and optional global-norm clipping.

  Args:
    opt: ConfigDict with ``lr``, ``b1``, ``b2``, ``eps``, ``warmup_steps``,
      ``clip_norm`` (0 = off).
    flatten: keep the state as one vector over all parameters (see below);
      False keeps it shaped like the parameters, which an ``fsdp`` axis can
      split along their own dimensions.
  """
  # Warmup from lr / warmup_steps (not 0, which would make the first update empty).
  schedule = (
      optax.linear_schedule(
          opt.lr / opt.warmup_steps, opt.lr, opt.warmup_steps - 1
      )
      if opt.warmup_steps > 1
      else optax.constant_schedule(opt.lr)
  )
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm else []
  tx = optax.chain(
      *parts, optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  )
  # flatten: one fused update over a single vector instead of one per leaf
  # (same arithmetic); config.optim.flatten says when that pays.
  return optax.flatten(tx) if flatten else tx


def make_optimizers(
    optim, fsdp: int = 1
) -> tuple[optax.GradientTransformation, ...]:
  """(G's, D's) optimisers from ``config.optim`` (sections ``g`` and ``d``),
  their states flattened as ``optim.flatten`` asks, unless an ``fsdp`` axis
  of more than one device splits them."""
  flatten = optim.flatten and fsdp == 1
  return make_optimizer(optim.g, flatten), make_optimizer(optim.d, flatten)


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + t) / (10 + t)): warm up, or the EMA would mostly remember
  the random initialisation for the first thousand steps."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def create_train_state(
    objective: GanObjective, g_tx, d_tx, key: jax.Array, batch: Batch
) -> TrainState:
  """A fresh state for batches shaped like ``batch``. Every leaf its own
  buffer, so a step that donates its state can take it as made, jitted or not.
  """
  g_params, d_params = init_params(objective, key, batch)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params,
      d_params=d_params,
      g_opt_state=g_tx.init(g_params),
      d_opt_state=d_tx.init(d_params),
      ema_params=jax.tree.map(jnp.copy, g_params),
      nonfinite=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
  )


def _all_finite(metrics: Metrics) -> jax.Array:
  """Whether every metric is finite. The metrics hold the gradients' global
  norm, which stands for every gradient (a NaN or inf anywhere makes it non-finite).
  """
  return jnp.all(jnp.isfinite(jnp.stack(jax.tree.leaves(metrics))))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    objective: GanObjective,
    g_tx,
    d_tx,
    seed: int,
    d_steps: int = 1,
    ema: float = 0.999,
    axis_name: str | None = None,
) -> tuple[TrainState, Metrics]:
  """One step of the game: ``d_steps`` discriminator updates, one generator update, EMA.

  Args:
    state: the current state (replicated).
    batch: ``image`` [B, R, R, 3], ``ids``/``mask`` [B, L]; under pmap, this
      device's slice of the global batch.
    objective, g_tx, d_tx: the game and the two optimisers (static).
    seed: the run seed.
    d_steps: discriminator updates per generator update (same batch, new noise).
    ema: the EMA decay ceiling.
    axis_name: the pmap axis, or None (single device or jit-sharded).

  Returns:
    The new state and scalar metrics (global means).
  """
  b = batch["ids"].shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
  batch = dict(batch, index=offset + jnp.arange(b))
  key = jax.random.fold_in(jax.random.key(seed), state.step)
  reduce = (
      (lambda t: t)
      if axis_name is None
      else (lambda t: jax.lax.pmean(t, axis_name))
  )

  # One generator pass serves both players: its images are the first D
  # update's fakes, and the G update pulls its gradient back through it. (Its
  # text features, which G's loss does not read, are dropped: their mask is
  # boolean and has no gradient.)
  def g_pass(p):
    out, partners = objective.generate_pass(
        p, batch, jax.random.fold_in(key, d_steps)
    )
    return out._replace(text=None), partners

  (g_out, partners), g_pullback = jax.vjp(g_pass, state.g_params)
  d_params, d_opt_state, finite = (
      state.d_params,
      state.d_opt_state,
      jnp.array(True),
  )
  metrics: Metrics = {}
  for i in range(d_steps):
    # Later D updates of a step judge fakes of their own noise.
    fake = g_out.images if i == 0 else None
    (_, d_metrics), d_grads = jax.value_and_grad(
        objective.discriminator_loss, has_aux=True
    )(
        d_params,
        state.g_params,
        batch,
        jax.random.fold_in(key, i),
        axis_name,
        fake,
    )
    d_grads, d_metrics = reduce(d_grads), reduce(d_metrics)
    d_metrics["d_grad_norm"] = optax.tree.norm(d_grads)
    finite &= _all_finite(d_metrics)
    updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    metrics.update(d_metrics)

  (_, g_metrics), out_grads = jax.value_and_grad(
      objective.generator_output_loss, argnums=(0, 4), has_aux=True
  )(g_out, d_params, batch, axis_name, partners)
  (g_grads,) = g_pullback(out_grads)
  g_grads, g_metrics = reduce(g_grads), reduce(g_metrics)
  g_metrics["g_grad_norm"] = optax.tree.norm(g_grads)
  finite &= _all_finite(g_metrics)
  updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  metrics.update(g_metrics)

  decay = ema_decay(state.step, ema)
  ema_params = jax.tree.map(
      lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, g_params
  )
  proposed = state.replace(
      g_params=g_params,
      d_params=d_params,
      g_opt_state=g_opt_state,
      d_opt_state=d_opt_state,
      ema_params=ema_params,
  )
  # A non-finite step changes nothing but the step and the counters. Off CPU
  # by a select: a GPU's host reads a conditional's predicate back from the
  # device, so it could not queue the next step while this one runs. XLA:CPU
  # keeps the cond: the select deadlocked 4 host devices' collectives in a
  # step loaded from the compilation cache (RESULTS.md section 30).
  if cpu_kernels.active():
    kept = jax.lax.cond(finite, lambda: proposed, lambda: state)
  else:
    kept = jax.tree.map(lambda p, s: jnp.where(finite, p, s), proposed, state)
  new_state = kept.replace(
      step=state.step + 1,
      nonfinite=jnp.where(finite, 0, state.nonfinite + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
  )
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  metrics["finite"] = finite.astype(jnp.float32)
  return new_state, metrics


def configured_step(config, objective: GanObjective, g_tx, d_tx) -> Callable:
  """``train_step`` with the config's seed, D updates per step and EMA decay
  bound: ``(state, batch[, axis_name]) -> (state, metrics)``, to compile."""
  return functools.partial(
      train_step,
      objective=objective,
      g_tx=g_tx,
      d_tx=d_tx,
      seed=config.seed,
      d_steps=config.train.d_steps,
      ema=config.train.ema,
  )


# -- compiled forms ---------------------------------------------------------


def check_batch_size(batch_size: int, num_devices: int) -> None:
  """A global batch must split evenly over the devices: a clear error before compiling."""
  if batch_size % num_devices:
    raise ValueError(
        f"train.batch_size={batch_size} is not divisible by the {num_devices} "
        f"devices; use a multiple of {num_devices}"
    )


def check_fsdp(fsdp: int, num_devices: int) -> None:
  """An fsdp axis must divide the devices: a clear error before compiling."""
  if fsdp < 1 or num_devices % fsdp:
    raise ValueError(
        f"train.fsdp={fsdp} must be a positive divisor of the {num_devices} "
        "devices"
    )


# A leaf smaller than this stays whole on every device under fsdp: gathering
# a bias or a norm's scale costs more than holding it.
FSDP_MIN_SIZE = 1024


def data_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A 2-D mesh (``data``, ``fsdp``) over all (or the given) devices, ``fsdp``
  of them along the second axis. The batch is split over both axes
  (``batch_sharding``), the state over ``fsdp`` (``state_shardings``)."""
  devices = np.array(jax.devices() if devices is None else devices).ravel()
  check_fsdp(fsdp, devices.size)
  return Mesh(devices.reshape(-1, fsdp), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """A batch's rows split over every device of ``mesh`` (both axes)."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def state_shardings(tree: Any, mesh: Mesh) -> Any:
  """Where each leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``) lives:
  split over ``fsdp`` along its largest dimension the axis divides, when it
  has at least ``FSDP_MIN_SIZE`` elements; otherwise whole on every device.
  With ``fsdp`` of size 1 everything is replicated, as in data parallelism.
  """
  n = mesh.shape["fsdp"]

  def place(x) -> NamedSharding:
    shape = tuple(x.shape)
    if n > 1 and np.prod(shape, dtype=np.int64) >= FSDP_MIN_SIZE:
      for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim] % n == 0:
          return NamedSharding(
              mesh, P(*(("fsdp" if i == dim else None) for i in range(dim + 1)))
          )
    return NamedSharding(mesh, P())

  return jax.tree.map(place, tree)


def jit_sharded_step(
    step_fn: Callable, mesh: Mesh, state_sharding: Any = None
) -> Callable:
  """``step_fn`` compiled with the batch split over the mesh, the state placed
  by ``state_sharding`` (default: replicated) and its buffers donated. Works
  on one device, many, and many hosts.
  """
  replicated = NamedSharding(mesh, P())
  return jax.jit(
      step_fn,
      in_shardings=(state_sharding or replicated, batch_sharding(mesh)),
      out_shardings=(state_sharding or replicated, replicated),
      donate_argnums=0,
  )


def jit_cached_step(
    step_fn: Callable, mesh: Mesh, gather: Callable, state_sharding: Any = None
) -> Callable:
  """``step_fn`` compiled to read its own batch: ``(state, cache) -> (state,
  metrics)`` with ``gather(cache, state.step)`` the step's batch, split over
  the mesh; the cache (``dallex.data.device_cache``) replicated, the state
  placed by ``state_sharding`` (default: replicated) and donated. No host
  work per step.
  """
  replicated = NamedSharding(mesh, P())

  def step(state, cache):
    batch = jax.lax.with_sharding_constraint(
        gather(cache, state.step), batch_sharding(mesh)
    )
    return step_fn(state, batch)

  return jax.jit(
      step,
      in_shardings=(state_sharding or replicated, replicated),
      out_shardings=(state_sharding or replicated, replicated),
      donate_argnums=0,
  )


def pmap_step(step_fn: Callable, axis_name: str = "batch") -> Callable:
  """``step_fn`` under ``jax.pmap``: the state replicated with a leading device
  axis, the batch split as [devices, B / devices, ...], gradients and metrics
  ``pmean``-ed. ``step_fn`` must accept ``axis_name``."""
  return jax.pmap(
      functools.partial(step_fn, axis_name=axis_name),
      axis_name=axis_name,
      donate_argnums=0,
  )


def shard_for_pmap(batch: Batch, num_devices: int) -> Batch:
  """[B, ...] -> [num_devices, B / num_devices, ...]."""
  return jax.tree.map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)


def replicate_for_pmap(tree: Any, num_devices: int) -> Any:
  """Copies every leaf onto a new leading device axis, for pmap's inputs."""
  return jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices, *np.shape(x))),
      tree,
  )
