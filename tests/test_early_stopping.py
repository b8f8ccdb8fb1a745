"""Early stopping, checkpoint selection and plateau scaling on scripted metric sequences."""

import numpy as np
import pytest

from jaxcxr.training import early_stopping
from jaxcxr.training.early_stopping import EarlyStopping
from jaxcxr.training.optim import PlateauScaler


@pytest.mark.parametrize(
  ('values', 'patience', 'min_delta', 'mode', 'stop_epoch', 'best_epoch'),
  [
    # improves to epoch 2, then 3 flat epochs -> stops after epoch 5
    ([0.5, 0.6, 0.7, 0.7, 0.69, 0.65, 0.9], 3, 0.0, 'max', 5, 2),
    # gains smaller than min_delta do not count as improvement
    ([0.5, 0.505, 0.509, 0.6], 2, 0.01, 'max', 2, 0),
    # losses: mode min
    ([1.0, 0.8, 0.9, 0.7, 0.75, 0.76], 2, 0.0, 'min', 5, 3),
    # never stops when it keeps improving
    ([0.1, 0.2, 0.3, 0.4], 1, 0.0, 'max', None, 3),
  ],
)
def test_stops_at_expected_epoch(values, patience, min_delta, mode, stop_epoch, best_epoch):
  es = EarlyStopping(patience, min_delta, mode)
  stopped = None
  for epoch, v in enumerate(values):
    es.update(epoch, v)
    if es.should_stop:
      stopped = epoch
      break
  assert stopped == stop_epoch
  assert es.best_epoch == best_epoch
  assert es.best == values[best_epoch]


def test_state_round_trips_through_a_dict():
  es = EarlyStopping(3, 0.0, 'max')
  for epoch, v in enumerate([0.5, 0.7, 0.6]):
    es.update(epoch, v)
  again = EarlyStopping(**vars(es).copy())
  assert again == es
  assert again.update(3, 0.65) is False and again.bad_epochs == 2


def test_bad_settings():
  with pytest.raises(ValueError, match='mode'):
    EarlyStopping(3, mode='maximum')
  with pytest.raises(ValueError, match='patience'):
    EarlyStopping(0)


def test_plateau_halves_after_patience():
  p = PlateauScaler(factor=0.5, patience=2, mode='max')
  scales = [p.update(v) for v in [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7]]
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize(
  ('select', 'schedule', 'rule'),
  [
    ('auto', 'cosine', 'last'),
    ('auto', 'step', 'last'),
    ('auto', 'constant', 'best'),
    ('auto', 'plateau', 'best'),
    ('best', 'cosine', 'best'),
    ('last', 'constant', 'last'),
  ],
)
def test_selection_rule(select, schedule, rule):
  assert early_stopping.selection_rule(select, schedule) == rule
  assert ('last epoch' in early_stopping.selection_reason(rule, select, schedule, 'val_loss')) == (
    rule == 'last'
  )


def test_unknown_selection_is_refused():
  with pytest.raises(ValueError, match="select='latest'"):
    early_stopping.selection_rule('latest', 'cosine')


def _simulated_runs(num_runs: int, epochs: int, f1_noise: float, loss_noise: float, seed: int = 0):
  """Per-epoch (true quality, validation macro-F1, validation loss) of simulated annealed runs.

  The true quality rises and saturates as a cosine schedule anneals (the last epochs gain least);
  validation macro-F1 on a small split adds independent noise of `f1_noise` per epoch (binomial on
  180 films at 0.88: sd 0.024); the validation loss
  follows the true quality with `loss_noise` (a mean over every film's probability, so smoother).
  """
  rng = np.random.default_rng(seed)
  e = np.arange(1, epochs + 1)
  progress = 1 - np.cos(np.pi * e / epochs) / 2 - 0.5  # cumulative lr of a cosine schedule, 0..1
  true = 0.92 - 0.25 * np.exp(-5 * progress)
  f1 = true + rng.normal(0, f1_noise, (num_runs, epochs))
  loss = 1.0 - true + rng.normal(0, loss_noise, (num_runs, epochs))
  return np.broadcast_to(true, f1.shape), f1, loss


def _true_quality_of(rule: str, true, f1, loss) -> float:
  runs = np.arange(len(true))
  pick = {
    'last': np.full(len(true), true.shape[1] - 1),
    'best_f1': f1.argmax(1),
    'best_loss': loss.argmin(1),
  }[rule]
  return float(true[runs, pick].mean())


def test_picking_the_best_epoch_on_a_noisy_metric_loses_to_the_last_epoch():
  """The mechanism of issue #23 on a synthetic noisy validation signal: on a schedule that
  anneals, the argmax of a noisy per-epoch metric lands early (winner's curse) and ships a worse
  model than the last epoch; the smoother validation loss loses less; without noise all agree."""
  true, f1, loss = _simulated_runs(4000, 16, f1_noise=0.025, loss_noise=0.005)
  last = _true_quality_of('last', true, f1, loss)
  best_f1 = _true_quality_of('best_f1', true, f1, loss)
  best_loss = _true_quality_of('best_loss', true, f1, loss)
  assert last - best_f1 > 0.002, (last, best_f1)
  assert last - best_loss < (last - best_f1) / 2, (last, best_loss, best_f1)
  assert last >= best_loss >= best_f1
  true, f1, loss = _simulated_runs(10, 16, f1_noise=0.0, loss_noise=0.0)
  assert _true_quality_of('best_f1', true, f1, loss) == _true_quality_of('last', true, f1, loss)
