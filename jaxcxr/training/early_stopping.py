"""Early stopping on a validation metric (Keras semantics).

Training stops once `patience` consecutive epochs failed to improve the best value by more than
`min_delta`; the checkpoint of the best epoch is what the final evaluation uses.
"""

import dataclasses


@dataclasses.dataclass
class EarlyStopping:
  patience: int
  min_delta: float = 0.0
  mode: str = 'max'          # 'max' for F1/accuracy/AUC, 'min' for losses
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
