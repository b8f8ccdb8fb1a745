"""Early stopping on a validation metric (Keras semantics), and which checkpoint a run ships.

Training stops once `patience` consecutive epochs failed to improve the best value by more than
`min_delta`. The checkpoint the final evaluation, `launch.predict` and the export use (`best/`) is
chosen by `selection_rule`:

- 'last': the last epoch. For schedules that anneal the learning rate (cosine, step) the last epoch
  is where the schedule was designed to land; picking an earlier "best" epoch on a small validation
  split chases noise and throws away the annealing (measured: docs/RESULTS.md, issue #23: best epoch
  by validation macro-F1 of 180 films 0.847 macro-F1 on the external films, last epoch 0.914).
- 'best': the best epoch by `metric` (for constant / plateau schedules, which never anneal).
- 'auto' (the default): 'last' for annealing schedules, else 'best'.

The default metric is the validation loss (a mean over every film's probability, so far less noisy
on a small split than macro-F1, which moves only when a film crosses a decision boundary).
"""

import dataclasses

SELECT = ('auto', 'last', 'best')
ANNEALING_SCHEDULES = ('cosine', 'step')


def selection_rule(select: str, schedule: str) -> str:
  """'last' or 'best': `config.early_stopping.select` resolved for `config.optim.schedule`."""
  if select not in SELECT:
    raise ValueError(f'early_stopping.select={select!r}: expected one of {SELECT}.')
  if select == 'auto':
    return 'last' if schedule in ANNEALING_SCHEDULES else 'best'
  return select


def selection_reason(rule: str, select: str, schedule: str, metric: str) -> str:
  """One sentence for the report: which checkpoint was chosen and why."""
  why = f"config.early_stopping.select='{select}'"
  if select == 'auto':
    why += f" with the '{schedule}' schedule"
  if rule == 'last':
    return (
      f'The last epoch ({why}): the learning-rate schedule anneals, so the final weights are '
      'the ones it was designed to reach; no epoch is picked on validation noise.'
    )
  return f'The best epoch by {metric} ({why}).'


@dataclasses.dataclass
class EarlyStopping:
  patience: int
  min_delta: float = 0.0
  mode: str = 'max'  # 'max' for F1/accuracy/AUC, 'min' for losses
  best: float | None = None
  best_epoch: int = -1
  bad_epochs: int = 0
  should_stop: bool = False

  def __post_init__(self):
    if self.mode not in ('max', 'min'):
      raise ValueError(f"early_stopping.mode={self.mode!r}: expected 'max' or 'min'.")
    if self.patience < 1:
      raise ValueError(f'early_stopping.patience={self.patience}: must be >= 1.')

  def update(self, epoch: int, value: float) -> bool:
    """Records one epoch's metric. Returns True when it is a new best."""
    sign = 1.0 if self.mode == 'max' else -1.0
    if self.best is None or sign * (value - self.best) > self.min_delta:
      self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
      return True
    self.bad_epochs += 1
    self.should_stop = self.bad_epochs >= self.patience
    return False
