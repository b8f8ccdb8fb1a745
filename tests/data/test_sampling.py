"""Epoch draws, host blocks, dedupe and stratified splits (jaxcxr.data.sampling)."""

import grain
import numpy as np
import pytest

from jaxcxr.data import sampling

LABELS_10_1_1 = np.array([0] * 100 + [1] * 10 + [2] * 10)


def _stream_labels(mode: str, n_draws: int, seed: int = 0) -> np.ndarray:
  """Labels of the first n_draws elements of the Grain resampled stream over LABELS_10_1_1."""
  ds = sampling.EpochResampleMapDataset(grain.MapDataset.source(list(LABELS_10_1_1)),
                                        LABELS_10_1_1, 3, mode=mode, seed=seed)
  return np.asarray(ds._getitems(list(range(n_draws))))  # pylint: disable=protected-access


def test_oversample_balances_10_1_1():
  frac = np.bincount(_stream_labels('oversample', 30_000), minlength=3) / 30_000
  np.testing.assert_allclose(frac, [1 / 3] * 3, atol=0.02)


@pytest.mark.parametrize('mode', ['none', 'class_weighted_loss'])
def test_plain_epochs_keep_source_ratio(mode):
  labels = _stream_labels(mode, 30_000)
  frac = np.bincount(labels, minlength=3) / len(labels)
  np.testing.assert_allclose(frac, [10 / 12, 1 / 12, 1 / 12], atol=0.02)
  # Exactly a permutation per epoch: every epoch holds each record once.
  n = len(LABELS_10_1_1)
  for e in range(3):
    idx = sampling.epoch_indices(LABELS_10_1_1, 3, mode=mode, seed=0, epoch=e)
    assert sorted(idx) == list(range(n))


def test_oversample_is_with_replacement_and_reseeded_per_epoch():
  e0 = sampling.epoch_indices(LABELS_10_1_1, 3, mode='oversample', seed=7, epoch=0)
  e1 = sampling.epoch_indices(LABELS_10_1_1, 3, mode='oversample', seed=7, epoch=1)
  assert len(e0) == len(LABELS_10_1_1)
  assert len(set(e0.tolist())) < len(e0)          # repeats (minority records drawn often)
  assert not np.array_equal(e0, e1)
  np.testing.assert_array_equal(
      e0, sampling.epoch_indices(LABELS_10_1_1, 3, mode='oversample', seed=7, epoch=0))
  # The stream concatenates epochs: position N + i is epoch 1's draw i.
  ds = sampling.EpochResampleMapDataset(grain.MapDataset.range(120), LABELS_10_1_1, 3,
                                        mode='oversample', seed=7)
  assert [ds[120 + i] for i in range(5)] == e1[:5].tolist()


def test_unknown_mode():
  with pytest.raises(ValueError, match="sampling='balanced'.*oversample"):
    sampling.EpochResampleMapDataset(grain.MapDataset.range(120), LABELS_10_1_1, 3,
                                     mode='balanced', seed=0)


def test_host_blocks_disjoint_and_cover():
  b, p_count = 4, 3
  seen = []
  for p in range(p_count):
    ds = sampling.HostBlockMapDataset(grain.MapDataset.range(10**6), local_batch=b,
                                      process_index=p, process_count=p_count)
    pos = [ds[j] for j in range(5 * b)]
    # Local batch k of process p is global positions [k*12 + p*4, k*12 + p*4 + 4).
    assert pos[:b] == list(range(p * b, (p + 1) * b))
    assert pos[b:2 * b] == list(range(12 + p * b, 12 + (p + 1) * b))
    seen.append(set(pos))
  assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
  assert set.union(*seen) == set(range(5 * b * p_count))


def test_dedupe_keeps_first_and_drops_conflicts():
  hashes = ['a', 'b', 'a', 'c', 'c', 'd']
  labels = [0, 0, 0, 1, 2, 1]
  names = ['x2', 'y', 'x1', 'c1', 'c2', 'd']
  keep, dups, conflicts = sampling.dedupe(hashes, labels, names)
  assert keep.tolist() == [False, True, True, False, False, True]
  assert dups == [['x1', 'x2']]
  assert conflicts == [['c1 (label 1)', 'c2 (label 2)']]


def test_stratified_split_counts_and_determinism():
  labels = [0] * 40 + [1] * 20 + [2] * 7
  names = [f'f{i:03d}' for i in range(len(labels))]
  a = sampling.stratified_split(labels, names, val_fraction=0.15, test_fraction=0.2, seed=3)
  for c, n in [(0, 40), (1, 20), (2, 7)]:
    got = [s for s, l in zip(a, labels) if l == c]
    assert got.count('test') == round(n * 0.2) and got.count('validation') == round(n * 0.15)
    assert got.count('train') == n - round(n * 0.2) - round(n * 0.15)
  assert a == sampling.stratified_split(labels, names, val_fraction=0.15, test_fraction=0.2,
                                        seed=3)
  # Input order does not matter (sorted by name), the seed does.
  rev = sampling.stratified_split(labels[::-1], names[::-1], val_fraction=0.15,
                                  test_fraction=0.2, seed=3)
  assert rev[::-1] == a
  assert a != sampling.stratified_split(labels, names, val_fraction=0.15, test_fraction=0.2,
                                        seed=4)
