"""Training: state, jitted train/eval steps and the `train_and_evaluate` loop.

The numeric core is pure: `train_step(state, batch, key)` and `eval_step(state, batch)` are jitted
once each with explicit `NamedSharding`s (batch split over the `data` mesh axis, state replicated
or FSDP-sharded, state donated). BatchNorm statistics are over the global batch because the step
sees the global, sharded batch. The dropout key is the run key folded with the step, so a resumed
run draws the same keys.
"""

import functools
import logging
import math
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from sklearn import metrics as skm

import jaxcxr
from jaxcxr import checkpoint as ckpt_lib
from jaxcxr import models
from jaxcxr import optim
from jaxcxr import run_log
from jaxcxr import sharding
from jaxcxr.config_checks import validate_config
from jaxcxr.early_stopping import EarlyStopping

# Exit status of a run stopped by SIGTERM after its checkpoint was written (EX_TEMPFAIL: re-run the
# same command to resume).
EXIT_PREEMPTED = 75


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  lr_scale: jax.Array = None   # host-driven plateau factor; multiplies every update


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/inf; the last good checkpoint is left intact."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written. Re-run the same command to resume."""


# ----------------------------------------------------------------------------- model & state

def class_names_for(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return jaxcxr.CLASS_NAMES_4 if config.data.builder_config == '4class' else jaxcxr.CLASS_NAMES_3


def build_model(config: ml_collections.ConfigDict) -> tuple[nn.Module, tuple[str, ...]]:
  """The Flax module of `config.model` and the class names it predicts."""
  names = class_names_for(config)
  overrides = {'dtype': jnp.dtype(config.model.dtype)}
  if config.model.dropout >= 0:
    overrides['dropout_rate'] = config.model.dropout
  if config.model.memory_efficient:
    overrides['memory_efficient'] = True
  return models.build(config.model.name, len(names), **overrides), names


def head_names(model_name: str) -> tuple[str, ...]:
  """Top-level parameter names of the classification head (fresh init, own learning rate)."""
  head = models.HEAD_PARAMS[model_name]
  return (head,) if isinstance(head, str) else tuple(head)


def _dummy_input(config) -> jax.ShapeDtypeStruct:
  s = config.data.image_size
  return jnp.zeros((1, s, s, 3), jnp.float32)


def init_variables(module: nn.Module, config, key: jax.Array) -> dict:
  variables = module.init({'params': key, 'dropout': key}, _dummy_input(config), train=False)
  return {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}


def abstract_variables(module: nn.Module, config) -> dict:
  variables = jax.eval_shape(
      functools.partial(init_variables, module, config), jax.random.key(0))
  variables.setdefault('batch_stats', {})
  return variables


def create_train_state(config, module: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  """Fresh state: random init, then converted ImageNet weights when `config.model.pretrained`."""
  variables = init_variables(module, config, key)
  if config.model.pretrained:
    from jaxcxr import weights  # pylint: disable=g-import-not-at-top
    _, pretrained = weights.load_converted(os.path.expanduser(config.model.pretrained))
    variables = weights.load_pretrained(variables, pretrained,
                                        skip=head_names(config.model.name))
  return TrainState.create(apply_fn=module.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}),
                           lr_scale=jnp.ones((), jnp.float32))


# ----------------------------------------------------------------------------- steps

def _model_input(images, dtype):
  from jaxcxr.data.preprocess import to_model_input  # pylint: disable=g-import-not-at-top
  return to_model_input(images, dtype)


def _is_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict, key: jax.Array, *, dtype, label_smoothing: float,
               class_weights: jax.Array | None) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch; a non-finite step leaves the state unchanged."""
  dropout_key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    x = _model_input(batch['image'], dtype)
    logits, new_vars = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    logits = logits.astype(jnp.float32)
    n = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], n), label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, targets)
    if class_weights is not None:
      w = class_weights[batch['label']]
      loss = jnp.sum(per_example * w) / jnp.sum(w)
    else:
      loss = jnp.mean(per_example)
    return loss, (logits, new_vars.get('batch_stats', {}))

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, new_opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
  new_params = optax.apply_updates(state.params, updates)
  # Checking the updates catches NaN/inf gradients and optimizer overflow alike.
  finite = jnp.isfinite(loss) & _is_finite(updates)
  new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state,
                            batch_stats=new_stats)
  # Keep the old state on a non-finite step (and still advance the step so keys stay in sync).
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  kept = kept.replace(step=state.step + 1)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return kept, {'loss': loss, 'accuracy': accuracy, 'finite': finite,
                'grad_norm': optax.tree.norm(grads)}


def eval_step(state: TrainState, batch: dict, *, dtype) -> jax.Array:
  """Float32 logits of a batch, BatchNorm in inference mode."""
  x = _model_input(batch['image'], dtype)
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return state.apply_fn(variables, x, train=False).astype(jnp.float32)


# ----------------------------------------------------------------------------- evaluation

def predict_split(eval_fn, state, data_cfg, handle, split: str, local_batch: int, mesh):
  """Labels, softmax probabilities and dataset indices of every example of a split."""
  from jaxcxr.data import loader  # pylint: disable=g-import-not-at-top
  labels, probs, valid = [], [], []
  for batch in loader.eval_iterator(data_cfg, handle, split, local_batch_size=local_batch,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count()):
    gbatch = sharding.global_batch({'image': batch['image']}, mesh)
    logits = eval_fn(state, gbatch)
    probs.append(multihost_utils.process_allgather(jax.nn.softmax(logits), tiled=True))
    labels.append(multihost_utils.process_allgather(
        sharding.global_batch({'l': batch['label']}, mesh)['l'], tiled=True))
    valid.append(multihost_utils.process_allgather(
        sharding.global_batch({'v': batch['valid']}, mesh)['v'], tiled=True))
  valid = np.concatenate(valid).astype(bool)
  return (np.concatenate(labels)[valid].astype(np.int64),
          np.concatenate(probs)[valid].astype(np.float64))


def epoch_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
  """Cheap per-epoch validation metrics (the full report comes from jaxcxr.evaluate)."""
  pred = probs.argmax(-1)
  n = probs.shape[1]
  eps = 1e-12
  nll = float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + eps)))
  out = {f'{prefix}_loss': nll,
         f'{prefix}_accuracy': float(skm.accuracy_score(labels, pred)),
         f'{prefix}_macro_f1': float(skm.f1_score(labels, pred, labels=range(n), average='macro',
                                                  zero_division=0))}
  try:
    out[f'{prefix}_macro_auc'] = float(skm.roc_auc_score(labels, probs, multi_class='ovr',
                                                         labels=range(n)))
  except ValueError:  # a class absent from this split
    out[f'{prefix}_macro_auc'] = float('nan')
  return out


# ----------------------------------------------------------------------------- the loop

class _SigtermFlag:
  """Turns SIGTERM into a flag that the loop checks after each step."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`, then evaluates the best checkpoint.

  Returns:
    The final summary (also written to `workdir/results.json`).
  """
  from jaxcxr import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import loader  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  validate_config(config)
  if '://' in workdir:
    raise ValueError(f'--workdir={workdir!r}: jaxcxr writes checkpoints, logs and reports with local '
                     'file I/O; use a local disk or a mounted bucket (e.g. gcsfuse) path.')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--workdir={workdir!r} cannot be created ({e.strerror}); choose a writable '
                     'directory.') from e
  ckpt_lib.write_config(workdir, config)

  mesh = sharding.make_mesh()
  n_proc = jax.process_count()
  global_batch = config.train.batch_size
  local_batch = global_batch // n_proc
  eval_global = config.eval.batch_size
  eval_local = eval_global // n_proc

  handle = data_lib.prepare(config.data)
  steps_per_epoch = loader.steps_per_epoch(handle, global_batch)
  total_steps = config.train.num_epochs * steps_per_epoch
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)

  module, class_names = build_model(config)
  tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch, total_steps,
                                      head_names(config.model.name))
  key = jax.random.key(config.seed)
  init_key, dropout_key = jax.random.split(key)

  abstract_state = jax.eval_shape(
      functools.partial(create_train_state, config, module, tx), init_key)
  state_sharding = sharding.state_shardings(abstract_state, mesh, config.train.param_sharding)
  batch_sh = sharding.batch_sharding(mesh)

  class_weights = None
  if config.data.sampling == 'class_weighted_loss':
    class_weights = jnp.asarray(loader.class_weights(handle), jnp.float32)
  dtype = jnp.dtype(config.model.dtype)
  p_train_step = jax.jit(
      functools.partial(train_step, dtype=dtype, label_smoothing=config.train.label_smoothing,
                        class_weights=class_weights),
      in_shardings=(state_sharding, batch_sh, sharding.replicated(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  p_eval_step = jax.jit(functools.partial(eval_step, dtype=dtype),
                        in_shardings=(state_sharding, batch_sh), out_shardings=batch_sh)

  train_iter = loader.train_iterator(config.data, handle, local_batch_size=local_batch,
                                     seed=config.seed, process_index=jax.process_index(),
                                     process_count=n_proc)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                       async_save=config.checkpoint.async_save)
  abstract_with_sh = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_sharding)
  restored = checkpointer.restore_latest(abstract_with_sh, train_iter)
  es_cfg = config.early_stopping
  stopper = EarlyStopping(es_cfg.patience, es_cfg.min_delta, es_cfg.mode)
  plateau = optim.PlateauScaler(config.optim.plateau_factor, config.optim.plateau_patience,
                                mode=es_cfg.mode)
  history: list[dict] = []
  if restored is None:
    state = jax.jit(functools.partial(create_train_state, config, module, tx),
                    out_shardings=state_sharding)(init_key)
    start_step = 0
  else:
    start_step, state, host = restored
    stopper = EarlyStopping(**host['early_stopping'])
    plateau = optim.PlateauScaler(**host['plateau'])
    history = host['history']

  log = run_log.RunLog(workdir, resume_step=start_step, total_steps=total_steps)
  n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
  log.message(f'{config.model.name}: {n_params:,} parameters; {len(jax.devices())} devices, '
              f'{n_proc} processes; global batch {global_batch}; {steps_per_epoch} steps/epoch; '
              + (f'resuming at step {start_step}.' if start_step else 'starting fresh.'))

  def host_state():
    return {'early_stopping': vars(stopper).copy(), 'plateau': vars(plateau).copy(),
            'history': history}

  step = start_step
  window_t, window_n = time.time(), 0
  pending = None   # (step, metrics) of the previous step, checked one step late: no stall
  epoch_sums = []
  last_train = {}
  try:
    with _SigtermFlag() as sigterm:
      while step < total_steps and not stopper.should_stop:
        batch = sharding.global_batch(next(train_iter), mesh)
        state, metrics = p_train_step(state, batch, dropout_key)
        step += 1
        if step == start_step + 1:
          # The first step of a segment includes compilation: keep it out of images/s.
          jax.block_until_ready(metrics)
          window_t, window_n = time.time(), 0
        else:
          window_n += global_batch
        if pending is not None:
          _check_finite(pending, config, log)
        pending = (step, metrics)
        epoch_sums.append((metrics['loss'], metrics['accuracy']))   # device scalars: no sync

        if step % config.train.log_every_steps == 0 or step == total_steps:
          m = jax.device_get(metrics)
          rate = window_n / max(time.time() - window_t, 1e-9)
          window_t, window_n = time.time(), 0
          last_train = {'loss': float(m['loss']), 'accuracy': float(m['accuracy']),
                        'grad_norm': float(m['grad_norm']),
                        'learning_rate': float(schedule(step - 1)) * float(state.lr_scale),
                        'images_per_s': rate}
          log.write('train', step, last_train)
          log.progress(step, loss=last_train['loss'], img_s=round(rate, 1),
                       epoch=f'{step / steps_per_epoch:.2f}')

        epoch_end = step % steps_per_epoch == 0 or step == total_steps
        if epoch_end:
          _check_finite(pending, config, log)
          pending = None
          epoch = math.ceil(step / steps_per_epoch)
          labels, probs = predict_split(p_eval_step, state, config.data, handle, 'validation',
                                        eval_local, mesh)
          # Train metrics are means over the epoch's steps (of this run segment when resumed).
          sums = np.asarray(jax.device_get(epoch_sums), np.float64).mean(axis=0)
          epoch_sums = []
          row = {'epoch': epoch, **epoch_metrics(labels, probs, 'val'),
                 'train_loss': float(sums[0]), 'train_accuracy': float(sums[1]),
                 'learning_rate': float(schedule(step - 1)) * float(state.lr_scale)}
          value = row.get(es_cfg.metric)
          if value is None:
            raise ValueError(f'config.early_stopping.metric={es_cfg.metric!r} is not a validation '
                             f'metric; choose one of {sorted(k for k in row if k.startswith("val_"))}.')
          improved = stopper.update(epoch, value)
          if config.optim.schedule == 'plateau':
            scale = np.float32(plateau.update(value))
            state = state.replace(lr_scale=jax.device_put(scale, state_sharding.lr_scale))
          row['best_epoch'] = stopper.best_epoch
          history.append(row)
          log.write('epoch', step, row)
          log.message(f'epoch {epoch}: ' + ', '.join(
              f'{k}={v:.4f}' for k, v in row.items() if isinstance(v, float)))
          if improved:
            checkpointer.save_best(step, state, host_state())
          checkpointer.save(step, state, train_iter, host_state())
        elif step % config.checkpoint.every_steps == 0:
          _check_finite(pending, config, log)   # never checkpoint a step not known to be finite
          pending = None
          checkpointer.save(step, state, train_iter, host_state())

        if _any_process(sigterm.raised):
          _check_finite(pending, config, log)
          checkpointer.save(step, state, train_iter, host_state())
          checkpointer.wait()
          log.message(f'SIGTERM: checkpoint of step {step} written; exiting with status '
                      f'{EXIT_PREEMPTED}. Re-run the same command to resume.')
          raise Preempted(step)
      _check_finite(pending, config, log)
      checkpointer.save(step, state, train_iter, host_state())
      checkpointer.wait()
  finally:
    checkpointer.wait()
    log.close()

  # Final evaluation of the best checkpoint.
  best = checkpointer.restore_best(abstract_with_sh)
  best_step = step
  if best is not None:
    best_step, state, _ = best
  checkpointer.close()
  split = config.eval.split
  labels, probs = predict_split(p_eval_step, state, config.data, handle, split, eval_local, mesh)
  summary = {'model': config.model.name, 'best_step': int(best_step),
             'best_epoch': int(stopper.best_epoch), 'steps': int(step),
             'stopped_early': bool(stopper.should_stop), 'split': split,
             'num_params': int(n_params),
             'train_step_compilations': int(p_train_step._cache_size()),  # pylint: disable=protected-access
             'images_per_s': last_train.get('images_per_s'),
             'wall_time_s': time.time() - t_start,
             **epoch_metrics(labels, probs, split)}
  if jax.process_index() == 0:
    _write_report(workdir, config, labels, probs, class_names, history, summary)
  return summary


def _check_finite(pending, config, log):
  if pending is None:
    return
  step, metrics = pending
  if bool(jax.device_get(metrics['finite'])):
    return
  msg = (f'Non-finite loss or gradients at step {step} (loss={float(metrics["loss"])}); the update '
         'was not applied.')
  if config.train.on_nonfinite == 'skip':
    log.message(msg + ' Skipping it (config.train.on_nonfinite=skip).')
    log.write('nonfinite', step, {'loss': float(metrics['loss'])})
    return
  raise NonFiniteError(
      msg + ' The last checkpoint is intact. Lower config.optim.learning_rate, enable '
      'config.optim.grad_clip_norm, or set config.train.on_nonfinite=skip.')


def _write_report(workdir, config, labels, probs, class_names, history, summary):
  import json  # pylint: disable=g-import-not-at-top
  try:
    from jaxcxr import evaluate  # pylint: disable=g-import-not-at-top
  except ImportError:
    evaluate = None
  if evaluate is not None:
    report = evaluate.compute_metrics(labels, probs, class_names,
                                      n_bootstrap=config.eval.bootstrap, seed=config.seed)
    evaluate.write_report(workdir, report, labels, probs, class_names, history=history,
                          split=summary['split'], extra=summary)
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'summary': summary, 'config': json.loads(config.to_json_best_effort())}, f,
              indent=2)
  os.replace(path + '.tmp', path)
  logging.info('Wrote %s', path)
