"""Epoch draws, host blocks, dedupe and stratified splits (jaxcxr.data.sampling)."""

import grain
import numpy as np
import pytest

from jaxcxr.data import sampling

LABELS_10_1_1 = np.array([0] * 100 + [1] * 10 + [2] * 10)


def _stream_labels(mode: str, n_draws: int, seed: int = 0) -> np.ndarray:
  """Labels of the first n_draws elements of the Grain resampled stream over LABELS_10_1_1."""
  ds = sampling.EpochResampleMapDataset(
    grain.MapDataset.source(list(LABELS_10_1_1)), LABELS_10_1_1, 3, mode=mode, seed=seed
  )
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
  assert len(set(e0.tolist())) < len(e0)  # repeats (minority records drawn often)
  assert not np.array_equal(e0, e1)
  np.testing.assert_array_equal(
    e0, sampling.epoch_indices(LABELS_10_1_1, 3, mode='oversample', seed=7, epoch=0)
  )
  # The stream concatenates epochs: position N + i is epoch 1's draw i.
  ds = sampling.EpochResampleMapDataset(
    grain.MapDataset.range(120), LABELS_10_1_1, 3, mode='oversample', seed=7
  )
  assert [ds[120 + i] for i in range(5)] == e1[:5].tolist()


def test_unknown_mode():
  with pytest.raises(ValueError, match=r"sampling='weighted'.*balanced.*oversample"):
    sampling.EpochResampleMapDataset(
      grain.MapDataset.range(120), LABELS_10_1_1, 3, mode='weighted', seed=0
    )


def _balanced(labels, epoch, seed=0, num_classes=3):
  return sampling.epoch_indices(
    np.asarray(labels), num_classes, mode='balanced', seed=seed, epoch=epoch
  )


def test_balanced_on_balanced_classes_is_a_permutation_every_epoch():
  labels = np.repeat([0, 1, 2], 30)
  epochs = [_balanced(labels, e, seed=3) for e in range(4)]
  for idx in epochs:
    assert sorted(idx.tolist()) == list(range(90))  # every record exactly once
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled per epoch
  np.testing.assert_array_equal(epochs[2], _balanced(labels, 2, seed=3))  # deterministic


def test_balanced_10_1_1_exact_counts():
  labels = LABELS_10_1_1  # 100 / 10 / 10, N = 120 -> 40 per class
  major = np.flatnonzero(labels == 0)
  epochs = [_balanced(labels, e, seed=5) for e in range(5)]
  for idx in epochs:
    assert len(idx) == 120
    assert np.bincount(labels[idx], minlength=3).tolist() == [40, 40, 40]
    # Minority records: each exactly 40 / 10 = 4 times, no more, no fewer.
    for c in (1, 2):
      assert set(np.bincount(idx, minlength=120)[labels == c].tolist()) == {4}
  # The majority class is read without replacement across epochs: 40 new records per epoch
  # (80 distinct in epochs 0-1, all 100 seen by the end of epoch 2), each exactly twice over
  # 5 epochs (200 draws). Epoch 2 straddles two permutations and may repeat a record.
  majority = [set(idx[labels[idx] == 0].tolist()) for idx in epochs]
  assert [len(m) for m in majority[:2]] == [40, 40]
  assert len(majority[0] | majority[1]) == 80 and majority[0] | majority[1] | majority[2] == set(
    major.tolist()
  )
  drawn = np.concatenate([idx[labels[idx] == 0] for idx in epochs])
  assert np.bincount(drawn, minlength=120)[major].tolist() == [2] * 100


def test_balanced_remainder_rotates_and_absent_classes_are_skipped():
  labels = np.array([0] * 7 + [1] * 5 + [2] * 2)  # N = 14, K = 3: 4 each + 2 extra
  per_epoch = [np.bincount(labels[_balanced(labels, e)], minlength=3).tolist() for e in range(3)]
  assert per_epoch == [[5, 5, 4], [4, 5, 5], [5, 4, 5]]
  # Class 2 (2 records) gets 4, 5, 5 draws: each record 2, then 2-3, then 2-3 times.
  counts = np.bincount(_balanced(labels, 0), minlength=14)
  assert counts[12:].tolist() == [2, 2]
  # A class with no training records (label 1 of 3) takes no share.
  sparse = np.array([0] * 6 + [2] * 3)
  idx = _balanced(sparse, 0)
  assert np.bincount(sparse[idx], minlength=3).tolist() == [5, 0, 4]
  assert sorted(set(idx[sparse[idx] == 2].tolist())) == [6, 7, 8]


def test_balanced_stream_matches_epoch_indices():
  ds = sampling.EpochResampleMapDataset(
    grain.MapDataset.range(120), LABELS_10_1_1, 3, mode='balanced', seed=7
  )
  want = np.concatenate([_balanced(LABELS_10_1_1, e, seed=7) for e in range(3)])
  assert [ds[g] for g in range(360)] == want.tolist()


def test_oversample_sees_about_63_percent_of_a_balanced_class():
  # Why 'balanced' exists: with replacement, an epoch of a balanced set misses ~1/e of it.
  labels = np.repeat([0, 1, 2], 280)
  idx = sampling.epoch_indices(labels, 3, mode='oversample', seed=0, epoch=0)
  distinct = [len(set(idx[labels[idx] == c].tolist())) for c in range(3)]
  assert all(150 < d < 200 for d in distinct), distinct
  assert [
    len(set(_balanced(labels, 0)[labels[_balanced(labels, 0)] == c].tolist())) for c in range(3)
  ] == [280] * 3


def test_host_blocks_disjoint_and_cover():
  b, p_count = 4, 3
  seen = []
  for p in range(p_count):
    ds = sampling.HostBlockMapDataset(
      grain.MapDataset.range(10**6), local_batch=b, process_index=p, process_count=p_count
    )
    pos = [ds[j] for j in range(5 * b)]
    # Local batch k of process p is global positions [k*12 + p*4, k*12 + p*4 + 4).
    assert pos[:b] == list(range(p * b, (p + 1) * b))
    assert pos[b : 2 * b] == list(range(12 + p * b, 12 + (p + 1) * b))
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
    got = [s for s, label in zip(a, labels, strict=True) if label == c]
    assert got.count('test') == round(n * 0.2) and got.count('validation') == round(n * 0.15)
    assert got.count('train') == n - round(n * 0.2) - round(n * 0.15)
  assert a == sampling.stratified_split(labels, names, val_fraction=0.15, test_fraction=0.2, seed=3)
  # Input order does not matter (sorted by name), the seed does.
  rev = sampling.stratified_split(
    labels[::-1], names[::-1], val_fraction=0.15, test_fraction=0.2, seed=3
  )
  assert rev[::-1] == a
  assert a != sampling.stratified_split(labels, names, val_fraction=0.15, test_fraction=0.2, seed=4)


def _v1_split(labels, names, *, val_fraction, test_fraction, seed):
  """Dataset version 1.0.0's split (film by film), kept here to pin `groups=()` to it."""
  labels = np.asarray(labels)
  out = [''] * len(labels)
  for c in np.unique(labels):
    idx = sorted(np.flatnonzero(labels == c), key=lambda i: names[i])
    perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
    n_test, n_val = round(len(idx) * test_fraction), round(len(idx) * val_fraction)
    for rank, j in enumerate(perm):
      out[idx[j]] = 'test' if rank < n_test else 'validation' if rank < n_test + n_val else 'train'
  return out


def test_split_without_groups_is_the_version_1_0_split():
  # Folders without look-alikes (cxr_dev) keep the splits earlier results were measured on.
  labels = [0] * 400 + [1] * 400 + [2] * 400
  names = [f'{c}/{i}.png' for c, i in zip(labels, range(1200), strict=True)]
  for seed in (0, 1, 2):
    assert sampling.stratified_split(
      labels, names, val_fraction=0.15, test_fraction=0.15, seed=seed
    ) == _v1_split(labels, names, val_fraction=0.15, test_fraction=0.15, seed=seed)


def _grouped_case():
  """300 films of 3 classes (150 / 100 / 50); 40 groups of 2-3 look-alikes within a class and one
  group of a Normal film with a Viral Pneumonia look-alike."""
  labels = np.array([0] * 150 + [1] * 100 + [2] * 50)
  names = [f'{c}/{i:03d}.png' for i, c in enumerate(labels)]
  rng = np.random.default_rng(0)
  free = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(3)}
  groups = [[int(free[1].pop()), int(free[2].pop())]]  # mixed labels
  for k in range(40):
    c = k % 3
    groups.append([int(free[c].pop()) for _ in range(2 + k % 2)])
  return labels, names, groups


def test_groups_stay_whole_and_classes_stay_stratified():
  labels, names, groups = _grouped_case()
  kw = dict(val_fraction=0.15, test_fraction=0.15)
  a = sampling.stratified_split(labels, names, seed=3, groups=groups, **kw)
  for g in groups:
    assert len({a[i] for i in g}) == 1, g  # no group spans splits
  # Per-class counts are those of the film-by-film split: round(n * fraction) per class.
  for c, n in [(0, 150), (1, 100), (2, 50)]:
    got = [s for s, label in zip(a, labels, strict=True) if label == c]
    assert (got.count('test'), got.count('validation')) == (round(n * 0.15), round(n * 0.15))
  # Groups land in every split, about as often as single films do (not parked in train).
  grouped = [a[g[0]] for g in groups]
  assert grouped.count('test') >= 2 and grouped.count('validation') >= 2
  assert grouped.count('train') >= 20
  # Deterministic; independent of the input order; the seed decides.
  assert a == sampling.stratified_split(labels, names, seed=3, groups=groups, **kw)
  n = len(labels)
  rev = sampling.stratified_split(
    labels[::-1], names[::-1], seed=3, groups=[[n - 1 - i for i in g] for g in groups], **kw
  )
  assert rev[::-1] == a
  assert a != sampling.stratified_split(labels, names, seed=4, groups=groups, **kw)


def test_group_too_large_for_test_goes_to_train():
  labels = [0] * 20
  names = [f'{i:02d}' for i in range(20)]
  groups = [[0, 1, 2, 3]]  # test and validation hold 3 films each
  for seed in range(5):
    a = sampling.stratified_split(
      labels, names, val_fraction=0.15, test_fraction=0.15, seed=seed, groups=groups
    )
    assert {a[i] for i in groups[0]} == {'train'}
    assert (a.count('test'), a.count('validation'), a.count('train')) == (3, 3, 14)
  # A group no split can hold overflows the split it overflows least (train on ties).
  a = sampling.stratified_split(
    labels, names, val_fraction=0.15, test_fraction=0.15, seed=0, groups=[list(range(18))]
  )
  assert {a[i] for i in range(18)} == {'train'} and a.count('train') == 18


def test_overlapping_groups_refused():
  with pytest.raises(ValueError, match='more than one group'):
    sampling.stratified_split(
      [0] * 10,
      [str(i) for i in range(10)],
      val_fraction=0.2,
      test_fraction=0.2,
      seed=0,
      groups=[[0, 1], [1, 2]],
    )
