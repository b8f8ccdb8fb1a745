"""The pure numeric core: one optimizer step and one evaluation step.

`train_step(state, batch, key)` and `eval_step(state, batch)` are jitted once each by the loop with
explicit `NamedSharding`s (batch split over the `data` mesh axis, state replicated or FSDP-sharded,
state donated). BatchNorm statistics are over the global batch because the step sees the global,
sharded batch. The dropout key is the run key folded with the step, so a resumed run draws the same
keys.
"""

import jax
import jax.numpy as jnp
import optax

from jaxcxr.data.preprocess import to_model_input
from jaxcxr.training.state import TrainState


def _is_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay at `step`: min(decay, (1 + step) / (10 + step)), so early weights fade fast."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch: dict, key: jax.Array, *, dtype, label_smoothing: float,
               class_weights: jax.Array | None, ema_decay: float = 0.0) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch; a non-finite step leaves the state unchanged.

  With `ema_decay` > 0 (and `state.ema_params` set) it also updates the moving average of the
  weights that `eval_step` evaluates.
  """
  dropout_key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    x = to_model_input(batch['image'], dtype)
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
  if ema_decay > 0 and state.ema_params is not None:
    d = ema_decay_at(state.step, ema_decay)
    new_state = new_state.replace(ema_params=jax.tree.map(
        lambda e, p: d * e + (1.0 - d) * p, state.ema_params, new_params))
  # Keep the old state on a non-finite step (and still advance the step so keys stay in sync).
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  kept = kept.replace(step=state.step + 1)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return kept, {'loss': loss, 'accuracy': accuracy, 'finite': finite,
                'grad_norm': optax.tree.norm(grads)}


def eval_step(state: TrainState, batch: dict, *, dtype) -> jax.Array:
  """Float32 logits of a batch, BatchNorm in inference mode (the EMA weights when kept)."""
  x = to_model_input(batch['image'], dtype)
  variables = {'params': state.params if state.ema_params is None else state.ema_params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return state.apply_fn(variables, x, train=False).astype(jnp.float32)
