"""The training loop: ``train_and_evaluate(config, workdir)``.

It resumes from the newest good checkpoint in ``workdir`` (state and data
position), reads the training set onto the devices when it fits
(``data.cache``; else the Grain pipeline feeds each step), runs the compiled
step, logs metrics (``metrics.jsonl`` and TensorBoard events), draws a
sample grid for fixed prompts and seeds every ``train.sample_every`` steps,
evaluates (``dallex.evaluation``) every ``evals.every`` steps, checkpoints
every ``train.checkpoint_every`` steps, at the end and on SIGTERM/SIGINT,
and stops with ``NonFiniteError`` after ``train.max_nonfinite`` non-finite
steps in a row. ``train.max_minutes`` caps the wall time of one invocation
(checked at log steps; the run saves and leaves as on a signal, and a later
call resumes). With several JAX processes, each reads its own shard of the
data (or holds the whole set in the device cache), process 0 alone writes
logs and images, and all take part in checkpoints.

    workdir/lock                   held by the trainer (dallex.workdir_lock)
    workdir/config.json            the resolved config
    workdir/checkpoints/<step>/    Orbax checkpoints (state, data, config)
    workdir/metrics.jsonl          one JSON object per logged step
    workdir/events/                TensorBoard event files (scalars, and each sample grid)
    workdir/samples/step_<N>.png   sample grids (EMA generator)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2
from tqdm import tqdm

from dallex import checkpoint, train, visualize, workdir_lock
from dallex.data import device_cache, pipeline, sources
from dallex.evaluation import suite
from dallex.objective import GanObjective, build_objective
from dallex.sampling import Sampler, sample
from dallex.text import ByteTokenizer


class RunError(RuntimeError):
  """The run cannot go on; the message says why and what to do."""


class NonFiniteError(RunError):
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


class _WriteFailed(RuntimeError):
  """Writing one of the run's outputs failed (the message names it and why)."""


@contextlib.contextmanager
def _writing(what: str):
  """Turns an OSError while writing ``what`` into a ``_WriteFailed``."""
  try:
    yield
  except OSError as e:
    raise _WriteFailed(
        f"could not write {what} ({checkpoint.write_cause(e)})"
    ) from e


def _open_log(path: str):
  """``path`` opened for appending whole lines: a last line left unfinished
  by an earlier failed write is cut off first, so every line stays JSON."""
  f = open(path, "a+b")
  f.seek(0, os.SEEK_END)
  if f.tell():
    f.seek(max(0, f.tell() - 65536))
    tail = f.read()
    if not tail.endswith(b"\n"):
      f.truncate(f.tell() - len(tail) + tail.rfind(b"\n") + 1)
  return f


class _Writer:
  """metrics.jsonl and TensorBoard events, written by process 0 only.

  Events are written synchronously (tensorboardX's EventsWriter, not its
  SummaryWriter, whose writer thread dies on a full disk and leaves the loop
  blocked on its queue), so a failed write stops the run with a clear error.
  """

  def __init__(self, workdir: str, active: bool):
    self.active = active
    if active:
      self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
      self._events_dir = os.path.join(workdir, "events")
      with _writing(self._jsonl_path):
        self._jsonl = _open_log(self._jsonl_path)
      with _writing(self._events_dir):
        os.makedirs(self._events_dir, exist_ok=True)
        self._events = EventsWriter(os.path.join(self._events_dir, "events"))

  def _event(self, step: int, summary: summary_pb2.Summary) -> None:
    with _writing(self._events_dir):
      self._events.write_event(
          event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
      )
      self._events.flush()

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    with _writing(self._jsonl_path):
      self._jsonl.write((json.dumps({"step": step, **metrics}) + "\n").encode())
      self._jsonl.flush()
    values = [tb_summary.scalar(k, v).value[0] for k, v in metrics.items()]
    self._event(step, summary_pb2.Summary(value=values))

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 [H, W, 3] picture, under ``name`` in TensorBoard's images."""
    if self.active:
      self._event(step, tb_summary.image(name, image, dataformats="HWC"))

  def close(self) -> None:
    if self.active:
      with contextlib.suppress(OSError):
        self._jsonl.close()
        self._events.close()


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
  """This process's rows -> one global array per field, split as ``sharding``."""
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


# The data state a checkpoint holds when the batches come from the device
# cache: their position is the step, so there is nothing else to remember.
_CACHE_DATA_STATE = {"device_cache": "the position is the step"}


def _device_cache(
    config: ml_collections.ConfigDict,
    source: sources.Source,
    sharding: jax.sharding.Sharding,
    lead: bool,
) -> device_cache.Cache | None:
  """The training set on the devices (``data.cache='device'``), or None, and
  the Grain pipeline reads it, when that is asked for or it cannot be held."""
  d = config.data
  if d.cache not in ("device", "none"):
    raise ValueError(f"data.cache must be 'device' or 'none', got {d.cache!r}")
  say = (
      (lambda m: print(f"dallex: {m}", flush=True))
      if lead
      else (lambda m: None)
  )
  if d.cache == "none":
    return None
  if config.train.parallel != "jit":
    say(
        "data.cache='device' gathers batches in the jit-compiled step; "
        "train.parallel='pmap' reads them with the Grain pipeline"
    )
    return None
  started = time.time()
  cache = device_cache.load(
      source, resolution=d.resolution, max_length=config.model.text.max_length
  )
  n, mb = cache.images.shape[0], cache.nbytes / 2**20
  if not device_cache.fits(cache.nbytes, jax.devices()[0]):
    say(
        f"the training set ({n:,} examples, {mb:,.0f} MB) is more than "
        f"{device_cache.MEMORY_SHARE:.0%} of a device's memory: it is read "
        "with the Grain pipeline instead of data.cache='device'"
    )
    return None
  say(
      f"the training set ({n:,} examples, {mb:,.0f} MB) is held on the devices "
      f"(read in {time.time() - started:.0f} s; data.cache='none' reads it "
      "with the Grain pipeline)"
  )
  return device_cache.put(cache, sharding)


def _resume_data(data_iter, restored, directory: str, config, lead: bool):
  """Puts the input back where checkpoint ``restored`` left it. The device
  cache needs nothing (its position is the step); the Grain iterator gets
  its state back."""
  from_cache = restored.data == _CACHE_DATA_STATE
  if data_iter is None:
    if not from_cache and lead:
      print(
          "dallex: this checkpoint's batches came from the Grain pipeline; "
          "from here on they come from the device cache, in its own order",
          flush=True,
      )
    return
  if from_cache:
    if lead:
      print(
          "dallex: this checkpoint's batches came from the device cache; the "
          "Grain pipeline starts its own order from the beginning",
          flush=True,
      )
    return
  try:
    data_iter.set_state(restored.data)
  except (KeyError, TypeError, ValueError) as e:
    # Grain's iterator state has one layout per reader count.
    raise ValueError(
        f"the input pipeline cannot resume from the data state in {directory}/"
        f"{restored.step} ({type(e).__name__}: {e}); resume with the data.num_workers "
        f"of the run that saved it (now {config.data.num_workers}; 0 and >0 differ)"
    ) from e


# What a run writes into its workdir, set aside whole by ``start_over``.
_OUTPUTS = ("checkpoints", "config.json", "metrics.jsonl", "events", "samples")


def _set_aside(workdir: str) -> str | None:
  """Moves an earlier run's outputs into ``workdir/replaced_<UTC time>/``
  (nothing is deleted); returns that folder, or None if there was nothing."""
  present = [n for n in _OUTPUTS if os.path.exists(os.path.join(workdir, n))]
  if not present:
    return None
  aside = os.path.join(
      workdir, time.strftime("replaced_%Y%m%dT%H%M%SZ", time.gmtime())
  )
  os.makedirs(aside)
  for name in present:
    os.rename(os.path.join(workdir, name), os.path.join(aside, name))
  return aside


def _changed_fields(saved: dict, config: dict, prefix: str = "") -> list[str]:
  """``field: old -> new`` for each leaf that differs between two config dicts."""
  out = []
  for key in sorted(set(saved) | set(config)):
    old, new = saved.get(key, "(absent)"), config.get(key, "(absent)")
    if isinstance(old, dict) and isinstance(new, dict):
      out += _changed_fields(old, new, f"{prefix}{key}.")
    elif old != new:
      out.append(f"{prefix}{key}: {old!r} -> {new!r}")
  return out


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, start_over: bool = False
) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns a summary dict.

  One trainer per workdir (``dallex.workdir_lock``). ``start_over``: an
  earlier run's outputs are moved into ``workdir/replaced_<time>/`` and
  training starts afresh; without it, a workdir whose checkpoints do not fit
  ``config`` is refused.
  """
  entered = time.time()
  t = config.train
  if t.max_minutes < 0:
    raise ValueError(
        f"train.max_minutes must be >= 0 (0 for no limit), got {t.max_minutes}"
    )
  if t.parallel not in ("jit", "pmap"):
    raise ValueError(
        f"train.parallel must be 'jit' or 'pmap', got {t.parallel!r}"
    )
  if t.fsdp != 1 and t.parallel == "pmap":
    raise ValueError(
        f"train.fsdp={t.fsdp} needs train.parallel='jit' (pmap replicates "
        "the state on every device)"
    )
  train.check_batch_size(t.batch_size, jax.device_count())
  train.check_fsdp(t.fsdp, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0
  # On several hosts, process 0 holds the lock of the shared workdir.
  with workdir_lock.hold(workdir) if lead else contextlib.nullcontext():
    if start_over and lead:
      aside = _set_aside(workdir)
      if aside:
        print(f"dallex: the earlier run's outputs moved to {aside}", flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dallex: workdir ready")
    with contextlib.ExitStack() as cleanup:
      return _train(config, workdir, entered, cleanup)


def _write_error(e: Exception, step: int, ckpt: checkpoint.Checkpointer):
  """The RunError for a failed write of the run's outputs at ``step``."""
  good = ckpt.all_steps()
  kept = (
      f"the complete checkpoints in {ckpt.directory} are intact (newest: "
      f"step {good[-1]})"
      if good
      else f"no checkpoint was completed in {ckpt.directory}"
  )
  return RunError(
      f"{e}. Training stopped at step {step}; {kept}. Free space or fix "
      "permissions there (or move the workdir where there is room), then run "
      "the same command to resume."
  )


def _train(
    config: ml_collections.ConfigDict,
    workdir: str,
    entered: float,
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
  """``train_and_evaluate`` once the workdir is this run's; ``cleanup``
  closes what it opens, however it ends."""
  t = config.train
  lead = jax.process_index() == 0
  objective = build_objective(config)
  # A sharded state keeps its optimiser state shaped like the parameters.
  g_tx, d_tx = train.make_optimizers(config.optim, t.fsdp)

  source = sources.open_source(config.data, config.data.train_split)
  mesh = train.data_mesh(fsdp=t.fsdp)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = train.batch_sharding(mesh)
  cached = _device_cache(config, source, replicated, lead)
  data_iter = None
  if cached is None:
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
    cleanup.callback(data_iter.close)  # stops reader processes, if any
    data_state = data_iter.get_state
  else:
    data_state = lambda: _CACHE_DATA_STATE

  res, length = config.data.resolution, config.model.text.max_length
  example = {
      "image": np.zeros((1, res, res, 3), np.float32),
      "ids": np.zeros((1, length), np.int32),
      "mask": np.ones((1, length), bool),
  }
  create = lambda k: train.create_train_state(objective, g_tx, d_tx, k, example)
  key = jax.random.key(config.seed)
  state_sharding = train.state_shardings(jax.eval_shape(create, key), mesh)
  state = jax.jit(create, out_shardings=state_sharding)(key)

  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints
  )
  # Quietly: a save that failed would raise again; the loop has said why.
  cleanup.callback(ckpt.close, quiet=True)
  try:
    restored = ckpt.restore_latest(checkpoint.abstract(state))
  except ValueError as e:
    raise RunError(
        f"{e}\nThis run's config does not fit them or they are damaged. "
        "Resume with the config each holds (<step>/config), train in a new "
        "workdir, or start over here with --start_over (the earlier run's "
        "outputs are moved aside, not deleted)."
    ) from None
  if lead:
    # Written once the checkpoints are known to fit, so a refused config never
    # replaces the one the run was trained with.
    path = os.path.join(workdir, "config.json")
    try:
      with _writing(path), open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    except _WriteFailed as e:
      raise _write_error(
          e, 0 if restored is None else restored.step, ckpt
      ) from e.__cause__
  if restored is not None:
    state = restored.state
    _resume_data(data_iter, restored, ckpt.directory, config, lead)
    if lead:
      print(
          f"dallex: resuming from {ckpt.directory}/{restored.step}", flush=True
      )
      changed = _changed_fields(
          restored.config, json.loads(config.to_json_best_effort())
      )
      if changed:
        print(
            "dallex: the config differs from the one this checkpoint was "
            "saved with, in: " + "; ".join(changed),
            flush=True,
        )
  start = int(state.step)

  step_fn = train.configured_step(config, objective, g_tx, d_tx)
  if t.parallel == "pmap":
    compiled = train.pmap_step(step_fn)
    local = jax.local_device_count()
    state = train.replicate_for_pmap(jax.device_get(state), local)
    unreplicate = lambda s: jax.tree.map(lambda x: x[0], s)
    run_step = lambda s: compiled(
        s, train.shard_for_pmap(next(data_iter), local)
    )
  elif cached is None:
    compiled = train.jit_sharded_step(step_fn, mesh, state_sharding)
    unreplicate = lambda s: s
    run_step = lambda s: compiled(
        s, _global_batch(next(data_iter), batch_sharding)
    )
  else:
    gather = functools.partial(
        device_cache.batch, seed=config.seed, batch_size=t.batch_size
    )
    compiled = train.jit_cached_step(step_fn, mesh, gather, state_sharding)
    unreplicate = lambda s: s
    run_step = lambda s: compiled(s, cached)

  try:
    writer = _Writer(workdir, lead)
  except _WriteFailed as e:
    raise _write_error(e, start, ckpt) from e.__cause__
  cleanup.callback(writer.close)
  samples_dir = os.path.join(workdir, "samples")
  config_dict = json.loads(config.to_json_best_effort())

  def save(step):
    ckpt.save(step, unreplicate(state), data_state(), config_dict)

  def draw(step):
    """The sample grid of ``step``: a PNG in samples/ and an image in TensorBoard."""
    if not lead:
      return None
    grid = visualize.enlarge(
        sample_grid(objective, unreplicate(state).ema_params, config),
        max(1, 64 // config.data.resolution),
    )
    writer.image(step, "samples", grid)
    with _writing(samples_dir):
      return visualize.save_png(
          grid, os.path.join(samples_dir, f"step_{step:07d}.png")
      )

  eval_sets = {}
  if config.evals.every:
    # Every process opens them (opening a dataset is a barrier across
    # processes); process 0 alone evaluates.
    eval_sets = {
        split: suite.load_eval_set(config.data, split, config.evals.num)
        for split in config.evals.splits
    }

  def run_evals(step):
    if not eval_sets or not lead:
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
    cleanup.callback(progress.close)
  last_sample, stopped_by, out_of_time, step = None, None, False, start
  streak = int(np.asarray(state.nonfinite).reshape(-1)[0])
  # The step before the one just dispatched, checked for non-finite values
  # only then: reading a step's result waits for it, so checking the newest
  # would leave the device idle while the host fetches the next batch
  # (the old shapes32 on 2 CPU cores: 4.6-4.7 steps/s that way, 4.9-5.0 this way).
  previous = None
  started = window_start = time.time()
  window_step, waited = start, 0.0
  try:
    with _StopSignal() as stop:
      for step in range(start + 1, t.steps + 1):
        state, metrics = run_step(state)
        if previous is not None:
          entered_wait = time.perf_counter()
          streak = check_finite(*previous, streak)
          waited += time.perf_counter() - entered_wait
        previous = (step, metrics["finite"])
        if step % t.log_every == 0 or step == t.steps:
          entered_wait = time.perf_counter()
          values = {
              k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()
          }
          values["nonfinite_total"] = float(
              np.asarray(state.nonfinite_total).reshape(-1)[0]
          )
          waited += time.perf_counter() - entered_wait
          # Over the window since the last log (the first window includes
          # compiling): steps/s, and the share of the time the host spent on
          # anything but waiting for the device's results.
          window = max(time.time() - window_start, 1e-9)
          values["steps_per_s"] = (step - window_step) / window
          values["host_share"] = max(0.0, 1.0 - waited / window)
          window_start, window_step, waited = time.time(), step, 0.0
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
    ckpt.wait()  # a failed last save raises here
  except (_WriteFailed, checkpoint.CheckpointWriteError) as e:
    raise _write_error(e, step, ckpt) from e.__cause__
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
    if out_of_time and step < t.steps:
      print(
          f"dallex: the time limit stopped training at step {step} of the "
          f"{t.steps} planned: the model is not yet trained as far as the "
          "numbers its config states. The same command continues from here.",
          flush=True,
      )
  return summary
