"""The training loop: `train_and_evaluate(config, workdir)`.

Shaped like the flax imagenet example: set up (data, model, jitted steps), restore or initialise,
loop over steps with per-epoch validation, early stopping and checkpoints, then evaluate the best
checkpoint. Each step is a named function below; the numeric core is in `steps.py`.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxcxr import data as data_lib
from jaxcxr.data import loader
from jaxcxr.training import checkpoint as ckpt_lib
from jaxcxr.training import (
  cpu_options,
  early_stopping,
  optim,
  prefetch,
  run_log,
  sharding,
  steps,
  validation,
  workdir_lock,
)
from jaxcxr.training import state as state_lib
from jaxcxr.training.config_checks import validate_config
from jaxcxr.training.errors import EXIT_PREEMPTED, NonFiniteError, Preempted

# (workdir, config, labels, probs, class_names, history, summary) -> None; writes the report.
Reporter = Callable[..., None]
# Global batches placed on the devices ahead of the step: the next one is copied while a step runs.
DEVICE_PREFETCH = 2


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Run:
  """Everything the loop needs that does not change while it runs."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  handle: Any
  steps_per_epoch: int
  total_steps: int
  class_names: tuple[str, ...]
  schedule: Callable[[int], float]
  abstract_state: Any  # ShapeDtypeStructs carrying their shardings
  state_sharding: Any
  init_state: Callable[[jax.Array, Any], Any]  # (key, pretrained or None) -> fresh TrainState
  train_step: Callable
  eval_step: Callable
  final_eval_step: Callable  # eval_step, or its test-time-augmented twin (config.eval.tta)

  @property
  def eval_local_batch(self) -> int:
    return self.config.eval.batch_size // jax.process_count()

  def predict(self, state, split: str, final: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probs) of a split with the current state (`final`: the final evaluation's step)."""
    step = self.final_eval_step if final else self.eval_step

    def probs_fn(images):
      return jax.nn.softmax(step(state, {'image': images}))

    labels, probs, _ = validation.predict_split(
      probs_fn,
      self.config.data,
      self.handle,
      split,
      local_batch_size=self.eval_local_batch,
      mesh=self.mesh,
    )
    return labels, probs


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Validates the config, creates `workdir` and writes (or checks on resume) its config.json."""
  validate_config(config)
  if '://' in workdir:
    raise ValueError(
      f'--workdir={workdir!r}: jaxcxr writes checkpoints, logs and reports with local '
      'file I/O; use a local disk or a mounted bucket (e.g. gcsfuse) path.'
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(
      f'--workdir={workdir!r} cannot be created ({e.strerror}); choose a writable directory.'
    ) from e
  ckpt_lib.write_config(workdir, config)


def make_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Data, model, optimizer, shardings and the two jitted steps of a run."""
  mesh = sharding.make_mesh()
  handle = data_lib.prepare(config.data)
  steps_per_epoch = loader.steps_per_epoch(handle, config.train.batch_size)
  total_steps = config.train.num_epochs * steps_per_epoch
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)

  module, class_names = state_lib.build_model(config)
  tx, schedule = optim.make_optimizer(
    config.optim, steps_per_epoch, total_steps, state_lib.head_names(config.model.name)
  )
  init_state = functools.partial(state_lib.create_train_state, config, module, tx)
  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  state_sharding = sharding.state_shardings(abstract_state, mesh, config.train.param_sharding)
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sharding
  )

  batch_sh = sharding.batch_sharding(mesh)
  class_weights = None
  if config.data.sampling == 'class_weighted_loss':
    class_weights = jnp.asarray(loader.class_weights(handle), jnp.float32)
  dtype = state_lib.compute_dtype(config)
  frozen_head = (
    state_lib.head_names(config.model.name) if float(config.optim.backbone_lr_mult) == 0.0 else None
  )
  options = cpu_options.compiler_options(config.model.cpu_ynn_fusion)
  train_step = jax.jit(
    functools.partial(
      steps.train_step,
      dtype=dtype,
      label_smoothing=config.train.label_smoothing,
      class_weights=class_weights,
      frozen_backbone_head=frozen_head,
      schedule=schedule,
      ema_decay=float(config.train.ema_decay),
      mixup_alpha=float(config.train.mixup_alpha),
      cutmix_alpha=float(config.train.cutmix_alpha),
    ),
    in_shardings=(state_sharding, batch_sh, sharding.replicated(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
    compiler_options=options,
  )

  def jit_eval(tta):
    return jax.jit(
      functools.partial(steps.eval_step, dtype=dtype, tta=tta),
      in_shardings=(state_sharding, batch_sh),
      out_shardings=batch_sh,
      compiler_options=options,
    )

  eval_step = jit_eval(False)
  final_eval_step = jit_eval(True) if config.eval.tta else eval_step
  return Run(
    config,
    workdir,
    mesh,
    handle,
    steps_per_epoch,
    total_steps,
    class_names,
    schedule,
    abstract_state,
    state_sharding,
    init_state,
    train_step,
    eval_step,
    final_eval_step,
  )


# ----------------------------------------------------------------------------- host-side state


@dataclasses.dataclass
class LoopState:
  """Host-side state saved with every checkpoint: early stopping, plateau scaler, history."""

  stopper: early_stopping.EarlyStopping
  plateau: optim.PlateauScaler
  history: list[dict]

  @classmethod
  def fresh(cls, config) -> 'LoopState':
    es = config.early_stopping
    return cls(
      early_stopping.EarlyStopping(es.patience, es.min_delta, es.mode),
      optim.PlateauScaler(config.optim.plateau_factor, config.optim.plateau_patience, mode=es.mode),
      [],
    )

  @classmethod
  def from_checkpoint(cls, host: dict) -> 'LoopState':
    return cls(
      early_stopping.EarlyStopping(**host['early_stopping']),
      optim.PlateauScaler(**host['plateau']),
      host['history'],
    )

  def to_checkpoint(self) -> dict:
    return {
      'early_stopping': vars(self.stopper).copy(),
      'plateau': vars(self.plateau).copy(),
      'history': self.history,
    }


def _place(tree, shardings):
  """Host arrays -> global arrays with `shardings`, each process supplying its own shards.

  (`jax.device_put` does the same, but with several processes it first all-gathers every array to
  check that the processes agree: hundreds of MB for VGG19's weights.)
  """
  return jax.tree.map(
    lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index: a[index]), tree, shardings
  )


def fresh_state(run: Run, key: jax.Array):
  """A new train state on the devices, with the converted weights of `config.model.pretrained`.

  The weights are read on the host, placed with the shardings of the state, and passed to the
  jitted init as an argument (donated), so neither the compiled program nor its abstract
  evaluation holds them, and no converted-weights read happens on resume.
  """
  init = jax.jit(
    run.init_state,
    out_shardings=run.state_sharding,
    donate_argnums=1,
    compiler_options=cpu_options.run_once_options(),
  )
  pretrained = state_lib.read_pretrained(run.config)
  if pretrained is None:
    return init(key, None)
  jax.eval_shape(run.init_state, key, pretrained)  # a WeightsError names misfits, before placing
  shardings = {
    c: {k: getattr(run.state_sharding, c)[k] for k in tree} for c, tree in pretrained.items()
  }
  return init(key, _place(pretrained, shardings))


def restore_or_init(run: Run, checkpointer: ckpt_lib.Checkpointer, train_iter, init_key):
  """(start_step, state, loop_state): from the newest readable checkpoint, else fresh."""
  restored = checkpointer.restore_latest(run.abstract_state, train_iter)
  if restored is None:
    return 0, fresh_state(run, init_key), LoopState.fresh(run.config)
  start_step, state, host = restored
  return start_step, state, LoopState.from_checkpoint(host)


# ----------------------------------------------------------------------------- loop pieces


def has_split(run: 'Run', split: str) -> bool:
  """False for an empty split (e.g. `config.data.val_fraction=0`: those films train instead)."""
  return run.handle.num_examples.get(split, 0) > 0


def selection_rule(config) -> str:
  """'last' or 'best': which epoch's checkpoint the run ships in best/ (early_stopping.py)."""
  return early_stopping.selection_rule(config.early_stopping.select, config.optim.schedule)


class Preemption:
  """Whether the run should checkpoint and stop for a SIGTERM (a preemption notice), per step.

  One process: a Python SIGTERM handler sets a flag that `reached(step)` returns. Several
  processes: JAX's preemption sync (`multihost_utils.reached_preemption_sync_point`); the
  coordination service catches SIGTERM on any process, tells the others, and all agree on the
  same step to stop at, so no step waits on a collective. Its SIGTERM handler is installed by
  `jax.distributed.initialize`, so no Python handler may replace it. With the preemption service
  turned off (`jax_enable_preemption_service=False`), the processes exchange their flags instead,
  only every `fallback_every` steps.
  """

  def __init__(self, fallback_every: int):
    self.raised = False
    self._old = None
    self._sync = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
    self._fallback_every = max(1, fallback_every)

  def __enter__(self):
    if self._sync:
      return self
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def reached(self, step: int) -> bool:
    """True at the step every process stops at (call it after every step, on every process)."""
    if self._sync:
      return multihost_utils.reached_preemption_sync_point(step)
    if jax.process_count() == 1:
      return self.raised
    if step % self._fallback_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.raised))))

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def check_finite(pending, config, log) -> None:
  """Raises NonFiniteError (or logs a skip) when the step of `pending` was not finite."""
  if pending is None:
    return
  step, metrics = pending
  if bool(jax.device_get(metrics['finite'])):
    return
  msg = (
    f'Non-finite loss or gradients at step {step} (loss={float(metrics["loss"])}); the update '
    'was not applied.'
  )
  if config.train.on_nonfinite == 'skip':
    log.message(msg + ' Skipping it (config.train.on_nonfinite=skip).')
    log.write('nonfinite', step, {'loss': float(metrics['loss'])})
    return
  raise NonFiniteError(
    msg + ' The last checkpoint is intact. Lower config.optim.learning_rate, enable '
    'config.optim.grad_clip_norm, or set config.train.on_nonfinite=skip.'
  )


class _Throughput:
  """Images/s over the steps since the last report; the first (compiling) step is left out."""

  def __init__(self):
    self.t, self.n = time.time(), 0

  def restart(self):
    self.t, self.n = time.time(), 0

  def add(self, images: int):
    self.n += images

  def rate(self) -> float:
    rate = self.n / max(time.time() - self.t, 1e-9)
    self.restart()
    return rate


def end_of_epoch(run: Run, state, step: int, epoch_sums: list, loop: LoopState, log):
  """Validates, updates early stopping / plateau, logs the epoch row. Returns (state, improved)."""
  config = run.config
  epoch = math.ceil(step / run.steps_per_epoch)
  # Train metrics are means over the epoch's steps (of this run segment when resumed).
  sums = np.asarray(jax.device_get(epoch_sums), np.float64).mean(axis=0)
  row = {
    'epoch': epoch,
    'train_loss': float(sums[0]),
    'train_accuracy': float(sums[1]),
    'learning_rate': float(run.schedule(step - 1)) * float(state.lr_scale),
  }
  improved = False
  if has_split(run, 'validation'):  # val_fraction=0: no validation, those films train
    labels, probs = run.predict(state, 'validation')
    row.update(validation.epoch_metrics(labels, probs, 'val'))
    improved = loop.stopper.update(epoch, row[config.early_stopping.metric])
    if config.optim.schedule == 'plateau':
      scale = np.float32(loop.plateau.update(row[config.early_stopping.metric]))
      state = state.replace(lr_scale=jax.device_put(scale, run.state_sharding.lr_scale))
  row['best_epoch'] = loop.stopper.best_epoch
  loop.history.append(row)
  log.write('epoch', step, row)
  log.message(
    f'epoch {epoch}: ' + ', '.join(f'{k}={v:.4f}' for k, v in row.items() if isinstance(v, float))
  )
  return state, improved


def train_loop(
  run: Run,
  state,
  start_step: int,
  loop: LoopState,
  train_iter,
  checkpointer: ckpt_lib.Checkpointer,
  log,
  dropout_key,
) -> tuple[Any, int, dict]:
  """Steps until `total_steps` or early stopping. Returns (state, last step, last train row)."""
  config = run.config
  ship_last = selection_rule(config) == 'last'
  global_batch = config.train.batch_size
  step = start_step
  speed = _Throughput()
  pending = None  # (step, metrics) of the previous step, checked one step late: no stall
  epoch_sums = []
  last_train = {}
  with Preemption(fallback_every=config.train.log_every_steps) as preemption:
    while step < run.total_steps and not loop.stopper.should_stop:
      batch = next(train_iter)  # already on the devices (DevicePrefetch)
      state, metrics = run.train_step(state, batch, dropout_key)
      step += 1
      if step == start_step + 1:
        jax.block_until_ready(metrics)  # the first step of a segment includes compilation
        speed.restart()
      else:
        speed.add(global_batch)
      check_finite(pending, config, log)
      pending = (step, metrics)
      epoch_sums.append((metrics['loss'], metrics['accuracy']))  # device scalars: no sync

      if step % config.train.log_every_steps == 0 or step == run.total_steps:
        m = jax.device_get(metrics)
        last_train = {
          'loss': float(m['loss']),
          'accuracy': float(m['accuracy']),
          'grad_norm': float(m['grad_norm']),
          'learning_rate': float(m['learning_rate']),
          'images_per_s': speed.rate(),
        }
        log.write('train', step, last_train)
        log.progress(
          step,
          loss=last_train['loss'],
          img_s=round(last_train['images_per_s'], 1),
          epoch=f'{step / run.steps_per_epoch:.2f}',
        )

      if step % run.steps_per_epoch == 0 or step == run.total_steps:
        check_finite(pending, config, log)
        pending = None
        state, improved = end_of_epoch(run, state, step, epoch_sums, loop, log)
        epoch_sums = []
        # best/ holds the checkpoint the run ships: the best epoch, or the one it ends on.
        ends = step == run.total_steps or loop.stopper.should_stop
        if ends if ship_last else improved:
          checkpointer.save_best(step, state, loop.to_checkpoint())
        checkpointer.save(step, state, train_iter, loop.to_checkpoint())
      elif step % config.checkpoint.every_steps == 0:
        check_finite(pending, config, log)  # never checkpoint a step not known to be finite
        pending = None
        checkpointer.save(step, state, train_iter, loop.to_checkpoint())

      if preemption.reached(step):
        check_finite(pending, config, log)
        checkpointer.save(step, state, train_iter, loop.to_checkpoint())
        checkpointer.wait()
        log.message(
          f'SIGTERM: checkpoint of step {step} written; exiting with status '
          f'{EXIT_PREEMPTED}. Re-run the same command to resume.'
        )
        raise Preempted(step)
    check_finite(pending, config, log)
    checkpointer.save(step, state, train_iter, loop.to_checkpoint())
    checkpointer.wait()
  return state, step, last_train


def ship_missing_final(
  run: Run, state, step: int, loop: LoopState, checkpointer: ckpt_lib.Checkpointer
) -> None:
  """Writes best/ for the final step when the run ships that step and best/ lacks it.

  That happens when the save of best/ at the end of the run failed (a full disk) after the
  periodic checkpoint of the same step was written: the re-run resumes at the last step, trains
  nothing, and without this would evaluate and ship nothing.
  """
  if selection_rule(run.config) == 'last':
    shipped = step
  else:
    shipped = min(loop.stopper.best_epoch * run.steps_per_epoch, run.total_steps)
  if shipped == step and checkpointer.best_step() != step:
    checkpointer.save_best(step, state, loop.to_checkpoint())
    checkpointer.wait()


def write_results(workdir: str, config, summary: dict) -> None:
  """results.json: the final summary and the resolved config (atomic write)."""
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'summary': summary, 'config': json.loads(config.to_json_best_effort())}, f, indent=2)
  os.replace(path + '.tmp', path)
  logging.info('Wrote %s', path)


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, reporter: Reporter | None = None
) -> dict:
  """Trains (or resumes) the run in `workdir`, then evaluates the checkpoint it ships (best/).

  Args:
    config: the experiment config (`configs/*.py`).
    workdir: where checkpoints, logs and results go; re-running on it resumes. One run at a time:
      the run holds `workdir/run.lock` (`workdir_lock`) until it returns or raises.
    reporter: called on process 0 as `reporter(workdir, config, labels, probs, class_names,
      history, summary)` to write the evaluation report (`jaxcxr.evaluation.report.write_run_report`
      via `jaxcxr.evaluation.train_and_report`); None writes only results.json.

  Returns:
    The final summary (also written to `workdir/results.json`).

  Raises:
    WorkdirInUse: another live run holds `workdir` (the message names its host and pid).
  """
  t_start = time.time()
  prepare_workdir(config, workdir)
  with workdir_lock.one_run(workdir):
    return _train_and_evaluate(config, workdir, reporter, t_start)


def _train_and_evaluate(config, workdir: str, reporter: Reporter | None, t_start: float) -> dict:
  """`train_and_evaluate` after the workdir is prepared and locked."""
  run = make_run(config, workdir)
  train_iter = prefetch.DevicePrefetch(
    loader.train_iterator(
      config.data,
      run.handle,
      local_batch_size=config.train.batch_size // jax.process_count(),
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ),
    functools.partial(sharding.global_batch, mesh=run.mesh),
    size=DEVICE_PREFETCH,
  )
  checkpointer = ckpt_lib.Checkpointer(
    workdir, max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save
  )
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  start_step, state, loop = restore_or_init(run, checkpointer, train_iter, init_key)

  log = run_log.RunLog(workdir, resume_step=start_step, total_steps=run.total_steps)
  n_params = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
  log.message(
    f'{config.model.name}: {n_params:,} parameters; {len(jax.devices())} devices, '
    f'{jax.process_count()} processes; global batch {config.train.batch_size}; '
    f'{run.steps_per_epoch} steps/epoch; '
    + (f'resuming at step {start_step}.' if start_step else 'starting fresh.')
  )
  try:
    state, step, last_train = train_loop(
      run, state, start_step, loop, train_iter, checkpointer, log, dropout_key
    )
    ship_missing_final(run, state, step, loop, checkpointer)
  finally:
    checkpointer.wait()
    log.close()
    train_iter.close()  # stops the Grain workers and unlinks their shared-memory batches

  # Final evaluation of the checkpoint the run ships (best/: the selected epoch).
  best = checkpointer.restore_best(run.abstract_state)
  best_step = step
  if best is not None:
    best_step, state, _ = best
  checkpointer.close()
  split = config.eval.split
  labels = probs = None
  if has_split(run, split):
    labels, probs = run.predict(state, split, final=True)
  else:
    log.message(
      f'No {split} split (its fraction is 0: those films trained). Score the run on '
      f'external films: python -m launch.evaluate --workdir {workdir} --eval_dir DIR'
    )
  rule = selection_rule(config)
  es = config.early_stopping
  summary = {
    'model': config.model.name,
    'best_step': int(best_step),
    'best_epoch': int(loop.stopper.best_epoch),
    'steps': int(step),
    'selected': {
      'rule': rule,
      'step': int(best_step),
      'epoch': math.ceil(best_step / run.steps_per_epoch),
      'why': early_stopping.selection_reason(rule, es.select, config.optim.schedule, es.metric),
    },
    'stopped_early': bool(loop.stopper.should_stop),
    'split': split,
    'num_params': int(n_params),
    'train_step_compilations': int(run.train_step._cache_size()),  # pylint: disable=protected-access
    'images_per_s': last_train.get('images_per_s'),
    'wall_time_s': time.time() - t_start,
  }
  if labels is not None:
    summary.update(validation.epoch_metrics(labels, probs, split))
  if jax.process_index() == 0:
    if reporter is not None and labels is not None:
      reporter(workdir, config, labels, probs, run.class_names, loop.history, summary)
    write_results(workdir, config, summary)
  return summary
