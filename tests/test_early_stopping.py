"""Early stopping and plateau scaling on scripted metric sequences."""

import pytest

from jaxcxr.training.early_stopping import EarlyStopping
from jaxcxr.training.optim import PlateauScaler


@pytest.mark.parametrize('values, patience, min_delta, mode, stop_epoch, best_epoch', [
    # improves to epoch 2, then 3 flat epochs -> stops after epoch 5
    ([0.5, 0.6, 0.7, 0.7, 0.69, 0.65, 0.9], 3, 0.0, 'max', 5, 2),
    # gains smaller than min_delta do not count as improvement
    ([0.5, 0.505, 0.509, 0.6], 2, 0.01, 'max', 2, 0),
    # losses: mode min
    ([1.0, 0.8, 0.9, 0.7, 0.75, 0.76], 2, 0.0, 'min', 5, 3),
    # never stops when it keeps improving
    ([0.1, 0.2, 0.3, 0.4], 1, 0.0, 'max', None, 3),
])
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
