"""The pure numeric core: one optimizer step and one evaluation step.

`train_step(state, batch, key)` and `eval_step(state, batch)` are jitted once each by the loop with
explicit `NamedSharding`s (batch split over the `data` mesh axis, state replicated or FSDP-sharded,
state donated). BatchNorm statistics are over the global batch because the step sees the global,
sharded batch. The dropout key is the run key folded with the step, so a resumed run draws the same
keys.

A frozen backbone (`optim.backbone_lr_mult=0`) is frozen the Keras way: its parameters get no
gradient and its BatchNorm layers run in inference mode (normalising with, and never updating,
their running statistics), while the head trains (dropout on).
"""

import contextlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcxr.data import preprocess
from jaxcxr.training import mixing
from jaxcxr.training.state import TrainState


def _is_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _frozen_batch_norm(head: Sequence[str]):
  """A Flax method interceptor: BatchNorm outside the top-level modules `head` in inference mode.

  The intercepted layer is re-bound to its own scope with `use_running_average=True`, so it reads
  the same variables and the model code stays unchanged.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (
      isinstance(module, nn.BatchNorm)
      and context.method_name == '__call__'
      and not (module.path and module.path[0] in head)
    ):
      if module.use_running_average is None:  # mode given at call time
        return next_fun(*args, **{**kwargs, 'use_running_average': True})
      if not module.use_running_average:
        return module.clone(parent=module.scope, use_running_average=True)(*args, **kwargs)
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(interceptor)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay at `step`: min(decay, (1 + step) / (10 + step)), so early weights fade fast."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(
  state: TrainState,
  batch: dict,
  key: jax.Array,
  *,
  dtype,
  label_smoothing: float,
  class_weights: jax.Array | None,
  frozen_backbone_head: Sequence[str] | None = None,
  schedule: optax.Schedule | None = None,
  ema_decay: float = 0.0,
  mixup_alpha: float = 0.0,
  cutmix_alpha: float = 0.0,
) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch; a non-finite step leaves the state unchanged.

  Args:
    state: the train state (donated by the loop).
    batch: global {'image': uint8 (B, S, S, 1), 'label': int32 (B,)}.
    key: the run's dropout key (folded with the step here).
    dtype: compute dtype (`state.compute_dtype`).
    label_smoothing: optax label smoothing.
    class_weights: (num_classes,) loss weights, or None.
    frozen_backbone_head: with a frozen backbone, the head's top-level parameter names: every
      other parameter gets a zero gradient (also left out of clipping and `grad_norm`) and every
      BatchNorm outside the head runs in inference mode. None trains everything.
    schedule: the head's learning-rate schedule; with it, metrics include the step's
      'learning_rate' (times the plateau factor), so logging it needs no host-side computation.
    ema_decay: > 0 (with `state.ema_params` set) also updates the moving average of the weights
      that `eval_step` evaluates.
    mixup_alpha, cutmix_alpha: > 0 mix each batch with its mirror (`mixing.mix`); the loss
      targets and class weights are mixed alike, `accuracy` stays against the unmixed labels.

  Returns:
    (new state, metrics: loss, accuracy, finite, grad_norm[, learning_rate]).
  """
  dropout_key = jax.random.fold_in(key, state.step)
  frozen = frozen_backbone_head is not None

  def loss_fn(params):
    x, lam = mixing.mix(
      jax.random.fold_in(dropout_key, 1),
      preprocess.to_model_input(batch['image'], dtype),
      mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha,
    )
    if frozen:  # no backbone gradients: XLA drops their computation
      params = {
        k: v if k in frozen_backbone_head else jax.lax.stop_gradient(v) for k, v in params.items()
      }
    with _frozen_batch_norm(frozen_backbone_head) if frozen else contextlib.nullcontext():
      logits, new_vars = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        x,
        train=True,
        rngs={'dropout': dropout_key},
        mutable=['batch_stats'],
      )
    logits = logits.astype(jnp.float32)
    n = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], n), label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, mixing.blend(targets, lam))
    if class_weights is not None:
      w = mixing.blend(class_weights[batch['label']], lam)
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
  new_state = state.replace(
    step=state.step + 1, params=new_params, opt_state=new_opt_state, batch_stats=new_stats
  )
  if ema_decay > 0 and state.ema_params is not None:
    d = ema_decay_at(state.step, ema_decay)
    new_state = new_state.replace(
      ema_params=optax.incremental_update(new_params, state.ema_params, 1.0 - d)
    )
  # Keep the old state on a non-finite step (and still advance the step so keys stay in sync).
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  kept = kept.replace(step=state.step + 1)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  metrics = {
    'loss': loss,
    'accuracy': accuracy,
    'finite': finite,
    'grad_norm': optax.tree.norm(grads),
  }
  if schedule is not None:
    metrics['learning_rate'] = jnp.asarray(schedule(state.step), jnp.float32) * state.lr_scale
  return kept, metrics


def eval_step(state: TrainState, batch: dict, *, dtype, tta: bool = False) -> jax.Array:
  """Float32 logits of a batch, BatchNorm in inference mode (the EMA weights when kept).

  With `tta`, the log of the softmax averaged over `preprocess.tta_views` (so a softmax of the
  result is that average; probabilities are floored at 1e-30 to keep the log finite).
  """
  variables = {'params': state.params if state.ema_params is None else state.ema_params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats

  def logits(images):
    return state.apply_fn(variables, preprocess.to_model_input(images, dtype), train=False)

  if tta:
    return jnp.log(jnp.maximum(preprocess.view_averaged_probs(logits, batch['image']), 1e-30))
  return logits(batch['image']).astype(jnp.float32)
