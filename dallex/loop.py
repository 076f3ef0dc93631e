"""The training loop: ``train_and_evaluate(config, workdir)``.

It resumes from the newest good checkpoint in ``workdir`` (state and data
position), runs the compiled step, logs metrics (``metrics.jsonl`` and
TensorBoard events), draws a sample grid for fixed prompts and seeds every
``train.sample_every`` steps, evaluates (``dallex.evaluation``) every
``evals.every`` steps, checkpoints every ``train.checkpoint_every`` steps, at
the end and on SIGTERM/SIGINT, and stops with ``NonFiniteError`` after
``train.max_nonfinite`` non-finite steps in a row. ``train.max_minutes``
caps the wall time of one invocation (checked at log steps; the run saves
and leaves as on a signal, and a later call resumes). With several JAX
processes, each reads its own shard of the data, process 0 alone writes logs
and images, and all take part in checkpoints.

    workdir/config.json            the resolved config
    workdir/checkpoints/<step>/    Orbax checkpoints (state, data, config)
    workdir/metrics.jsonl          one JSON object per logged step
    workdir/events/                TensorBoard event files (scalars, and each sample grid)
    workdir/samples/step_<N>.png   sample grids (EMA generator)
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm import tqdm

from dallex import checkpoint, train, visualize
from dallex.data import pipeline, sources
from dallex.evaluation import suite
from dallex.objective import GanObjective, build_objective
from dallex.sampling import Sampler, sample
from dallex.text import ByteTokenizer


class NonFiniteError(RuntimeError):
  """Training produced non-finite losses or gradients too many steps in a row."""


class _StopSignal:
  """Remembers a SIGTERM/SIGINT so the loop can save and leave cleanly."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Writer:
  """metrics.jsonl and TensorBoard events, written by process 0 only."""

  def __init__(self, workdir: str, active: bool):
    self.active = active
    if active:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "events"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(name, value, step)

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 [H, W, 3] picture, under ``name`` in TensorBoard's images."""
    if self.active:
      self._tb.add_image(name, image, step, dataformats="HWC")
      self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def _out_of_time(entered: float, max_minutes: float) -> bool:
  """Whether ``max_minutes`` have passed since ``entered``, by process 0's clock,
  so that every process stops after the same step."""
  late = np.array(time.time() - entered >= 60.0 * max_minutes)
  if jax.process_count() > 1:
    late = multihost_utils.broadcast_one_to_all(late)
  return bool(late)


def _global_batch(
    local: dict[str, np.ndarray], sharding
) -> dict[str, jax.Array]:
  """This process's rows -> one global array per field, sharded over ``data``."""
  return {
      k: jax.make_array_from_process_local_data(sharding, v)
      for k, v in local.items()
  }


def sample_grid(
    objective: GanObjective, params: Any, config: ml_collections.ConfigDict
) -> np.ndarray:
  """uint8 grid: one row per prompt of ``config.sample``, ``num_per_prompt`` seeds each."""
  s = config.sample
  prompts = [p for p in s.prompts for _ in range(s.num_per_prompt)]
  ids, mask = ByteTokenizer(config.model.text.max_length).encode(prompts)
  images = sample(
      objective.generator,
      params,
      ids,
      mask,
      jax.random.key(s.seed),
      z_dim=objective.z_dim,
      ca_dim=objective.ca_dim,
      truncation=s.truncation,
  )
  return visualize.make_grid(np.asarray(images), s.num_per_prompt)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns a summary dict."""
  entered = time.time()
  t = config.train
  lead = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  if t.max_minutes < 0:
    raise ValueError(
        f"train.max_minutes must be >= 0 (0 for no limit), got {t.max_minutes}"
    )
  if t.parallel not in ("jit", "pmap"):
    raise ValueError(
        f"train.parallel must be 'jit' or 'pmap', got {t.parallel!r}"
    )
  train.check_batch_size(t.batch_size, jax.device_count())
  objective = build_objective(config)
  g_tx, d_tx = train.make_optimizers(config.optim)

  source = sources.open_source(config.data, config.data.train_split)
  dataset = pipeline.make_dataset(
      source,
      batch_size=t.batch_size // jax.process_count(),
      resolution=config.data.resolution,
      max_length=config.model.text.max_length,
      seed=config.seed,
      num_threads=config.data.num_threads,
      prefetch=config.data.prefetch,
      num_workers=config.data.num_workers,
  )
  data_iter = iter(dataset)

  mesh = train.data_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")
  )
  res, length = config.data.resolution, config.model.text.max_length
  example = {
      "image": np.zeros((1, res, res, 3), np.float32),
      "ids": np.zeros((1, length), np.int32),
      "mask": np.ones((1, length), bool),
  }
  state = jax.jit(
      lambda k: train.create_train_state(objective, g_tx, d_tx, k, example),
      out_shardings=replicated,
  )(jax.random.key(config.seed))

  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints
  )
  try:
    restored = ckpt.restore_latest(checkpoint.abstract(state))
  except ValueError as e:
    ckpt.close()
    data_iter.close()
    raise ValueError(
        f"{e}\nThis run's config does not fit them or they are damaged: resume "
        f"with the config each holds (<step>/config), or train in a new "
        f"workdir."
    ) from None
  if lead:
    # Written once the checkpoints are known to fit, so a refused config never
    # replaces the one the run was trained with.
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if restored is not None:
    state = restored.state
    try:
      data_iter.set_state(restored.data)
    except (KeyError, TypeError, ValueError) as e:
      # Grain's iterator state has one layout per reader count.
      raise ValueError(
          f"the input pipeline cannot resume from the data state in {ckpt.directory}/"
          f"{restored.step} ({type(e).__name__}: {e}); resume with the data.num_workers "
          f"of the run that saved it (now {config.data.num_workers}; 0 and >0 differ)"
      ) from e
    if lead:
      print(
          f"dallex: resuming from {ckpt.directory}/{restored.step}", flush=True
      )
  start = int(state.step)

  step_fn = train.configured_step(config, objective, g_tx, d_tx)
  if t.parallel == "pmap":
    compiled = train.pmap_step(step_fn)
    local = jax.local_device_count()
    state = train.replicate_for_pmap(jax.device_get(state), local)
    unreplicate = lambda s: jax.tree.map(lambda x: x[0], s)
    run_step = lambda s, b: compiled(s, train.shard_for_pmap(b, local))
  else:
    compiled = train.jit_sharded_step(step_fn, mesh)
    unreplicate = lambda s: s
    run_step = lambda s, b: compiled(s, _global_batch(b, batch_sharding))

  writer = _Writer(workdir, lead)
  samples_dir = os.path.join(workdir, "samples")
  config_dict = json.loads(config.to_json_best_effort())

  def save(step):
    ckpt.save(step, unreplicate(state), data_iter.get_state(), config_dict)

  def draw(step):
    """The sample grid of ``step``: a PNG in samples/ and an image in TensorBoard."""
    if not lead:
      return None
    grid = visualize.enlarge(
        sample_grid(objective, unreplicate(state).ema_params, config),
        max(1, 64 // config.data.resolution),
    )
    writer.image(step, "samples", grid)
    return visualize.save_png(
        grid, os.path.join(samples_dir, f"step_{step:07d}.png")
    )

  eval_sets = {}
  if config.evals.every and lead:
    eval_sets = {
        split: suite.load_eval_set(config.data, split, config.evals.num)
        for split in config.evals.splits
    }

  def run_evals(step):
    if not eval_sets:
      return
    current = jax.device_get(unreplicate(state))
    sampler = Sampler(
        config,
        objective.generator,
        current.ema_params,
        step,
        objective.discriminator,
        current.d_params,
    )
    for split, eval_set in eval_sets.items():
      result = suite.evaluate(
          sampler,
          eval_set,
          config.evals.seed,
          batch_size=config.evals.batch_size,
      )
      writer.write(
          step,
          {
              f"eval/{split}/{k}": float(v)
              for k, v in result.metrics.items()
              if not k.startswith("num")
          },
      )

  def check_finite(step: int, finite: jax.Array, streak: int) -> int:
    """The run of non-finite steps up to ``step``, given its ``finite`` metric."""
    streak = 0 if float(np.asarray(finite).reshape(-1)[0]) else streak + 1
    if streak >= t.max_nonfinite:
      raise NonFiniteError(
          f"{streak} non-finite steps in a row (up to step {step}); parameters were "
          f"left unchanged by each, and the last good checkpoint is step "
          f"{max(ckpt.all_steps(), default=0)} in {ckpt.directory}. Lower the learning "
          "rates, add gradient clipping (optim.*.clip_norm) or check the data."
      )
    return streak

  progress = None
  if lead:
    progress = tqdm(
        total=t.steps, initial=start, desc="train", dynamic_ncols=True
    )
  last_sample, stopped_by, out_of_time, step = None, None, False, start
  streak = int(np.asarray(state.nonfinite).reshape(-1)[0])
  # The step before the one just dispatched, checked for non-finite values
  # only then: reading a step's result waits for it, so checking the newest
  # would leave the device idle while the host fetches the next batch
  # (the old shapes32 on 2 CPU cores: 4.6-4.7 steps/s that way, 4.9-5.0 this way).
  previous = None
  started = window_start = time.time()
  window_step = start
  try:
    with _StopSignal() as stop:
      for step in range(start + 1, t.steps + 1):
        state, metrics = run_step(state, next(data_iter))
        if previous is not None:
          streak = check_finite(*previous, streak)
        previous = (step, metrics["finite"])
        if step % t.log_every == 0 or step == t.steps:
          values = {
              k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()
          }
          values["nonfinite_total"] = float(
              np.asarray(state.nonfinite_total).reshape(-1)[0]
          )
          # Over the window since the last log (the first window includes compiling).
          values["steps_per_s"] = (step - window_step) / max(
              time.time() - window_start, 1e-9
          )
          window_start, window_step = time.time(), step
          writer.write(step, values)
          if progress is not None:
            progress.set_postfix(
                d=f"{values['d_loss']:.3f}", g=f"{values['g_loss']:.3f}"
            )
          out_of_time = bool(t.max_minutes) and _out_of_time(
              entered, t.max_minutes
          )
          if out_of_time:
            stopped_by = f"the time limit of {t.max_minutes:g} min"
        if progress is not None:
          progress.update(1)
        if t.sample_every and step % t.sample_every == 0:
          last_sample = draw(step)
        if config.evals.every and step % config.evals.every == 0:
          run_evals(step)
        if t.checkpoint_every and step % t.checkpoint_every == 0:
          save(step)
        if stop.received is not None:
          stopped_by = signal.Signals(stop.received).name
        if stopped_by:
          break
    if previous is not None:
      check_finite(*previous, streak)
    if not ckpt.all_steps() or max(ckpt.all_steps()) != step:
      save(step)
    drawn = last_sample is not None and last_sample.endswith(f"{step:07d}.png")
    if (step == t.steps or out_of_time) and not drawn:
      last_sample = draw(step)
  finally:
    data_iter.close()  # stops reader processes, if any
    ckpt.close()
    writer.close()
    if progress is not None:
      progress.close()
  summary = dict(
      step=step,
      stopped_by=stopped_by,
      workdir=os.path.abspath(workdir),
      checkpoint=os.path.join(ckpt.directory, str(step)),
      metrics=os.path.join(os.path.abspath(workdir), "metrics.jsonl"),
      samples=last_sample,
      seconds=round(time.time() - started, 1),
  )
  if lead:
    print(
        f"dallex: step {step}/{t.steps}"
        + (f" (stopped by {stopped_by})" if stopped_by else "")
        + f"; checkpoint {summary['checkpoint']}; metrics {summary['metrics']}; "
        f"events {os.path.join(summary['workdir'], 'events')}; samples {last_sample}",
        flush=True,
    )
  return summary
