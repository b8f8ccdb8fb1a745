"""Optax optimizers and learning-rate schedules built from `config.optim`.

Backbone and head get separate learning rates through `optax.multi_transform`: the head's
top-level parameter name(s) label it 'head', everything else is 'backbone'. A backbone multiplier
of 0 freezes the backbone (`optax.set_to_zero`), which is the seed project's "frozen base" setup;
the train step then also runs the backbone's BatchNorm in inference mode, Keras-style (`steps.py`).

The 'plateau' schedule is host-driven: the jitted step multiplies its updates by
`TrainState.lr_scale`, which `PlateauScaler` lowers between epochs from the validation metric.
(For SGD and AdamW, scaling the final update equals scaling the learning rate.)
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'step', 'plateau')
OPTIMIZERS = ('adamw', 'sgd')


def make_schedule(
  cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """Peak `cfg.learning_rate` with linear warmup, then constant / cosine / step decay."""
  lr = float(cfg.learning_rate)
  warmup = round(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule in ('constant', 'plateau'):
    after = optax.constant_schedule(lr)
  elif cfg.schedule == 'cosine':
    after = optax.cosine_decay_schedule(
      lr, max(1, total_steps - warmup), alpha=float(cfg.min_lr_ratio)
    )
  elif cfg.schedule == 'step':
    boundaries = {
      int(e * steps_per_epoch) - warmup: float(cfg.step_gamma)
      for e in cfg.step_epochs
      if int(e * steps_per_epoch) > warmup
    }
    after = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f'config.optim.schedule={cfg.schedule!r}: expected one of {SCHEDULES}.')
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], boundaries=[warmup])


def _decay_mask(params: Any) -> Any:
  # Decay conv/dense kernels only, not biases or BatchNorm scales (standard fine-tuning practice).
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _base_tx(cfg: ml_collections.ConfigDict, lr: Callable[[int], float]):
  if cfg.name == 'adamw':
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask)
  if cfg.name == 'sgd':
    chain = []
    if cfg.weight_decay:
      chain.append(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask))
    chain.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    return optax.chain(*chain)
  raise ValueError(f'config.optim.name={cfg.name!r}: expected one of {OPTIMIZERS}.')


def make_optimizer(
  cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int, head_names: Sequence[str]
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer.

  Args:
    cfg: `config.optim`.
    steps_per_epoch: optimizer steps per epoch (schedules are given in epochs).
    total_steps: steps of the whole run (cosine length).
    head_names: top-level parameter names that form the classification head.
  Returns:
    (transformation, head learning-rate schedule) — the schedule is what gets logged.
  """
  schedule = make_schedule(cfg, steps_per_epoch, total_steps)
  head_tx = _base_tx(cfg, schedule)
  mult = float(cfg.backbone_lr_mult)
  if mult == 1.0:
    tx = head_tx
  else:
    backbone_tx = (
      optax.set_to_zero() if mult == 0.0 else _base_tx(cfg, lambda step: mult * schedule(step))
    )
    heads = frozenset(head_names)

    def labels(params):
      return {k: _label_all(v, 'head' if k in heads else 'backbone') for k, v in params.items()}

    tx = optax.multi_transform({'head': head_tx, 'backbone': backbone_tx}, labels)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx, schedule


def _label_all(tree, label: str):
  """`tree` with every leaf replaced by `label` (an optax.multi_transform label tree)."""
  return jax.tree.map(lambda _: label, tree)


@dataclasses.dataclass
class PlateauScaler:
  """Reduce-on-plateau on an epoch metric (like torch's ReduceLROnPlateau, mode max or min)."""

  factor: float
  patience: int
  min_delta: float = 0.0
  mode: str = 'max'
  min_scale: float = 1e-3
  scale: float = 1.0
  best: float | None = None
  bad_epochs: int = 0

  def update(self, value: float) -> float:
    """Feeds one epoch's metric; returns the (possibly lowered) learning-rate scale."""
    sign = 1.0 if self.mode == 'max' else -1.0
    if self.best is None or sign * (value - self.best) > self.min_delta:
      self.best, self.bad_epochs = float(value), 0
    else:
      self.bad_epochs += 1
      if self.bad_epochs >= self.patience:
        self.scale = max(self.min_scale, self.scale * self.factor)
        self.bad_epochs = 0
    return self.scale
