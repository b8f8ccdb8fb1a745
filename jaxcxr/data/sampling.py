"""Index bookkeeping: content de-duplication, stratified splits, epoch draws and host sharding.

The training stream is a Grain `MapDataset` of infinite length whose position `g` is
`(epoch, pos) = divmod(g, N)` with N = number of training examples; epoch e is one array of N record
indices drawn from `(seed, e)`:

- `'oversample'`: N draws WITH replacement, P(i) proportional to 1 / count(class of i) (PyTorch
  `WeightedRandomSampler(weights, N, replacement=True)` semantics: every class is drawn equally
  often in expectation);
- `'none'` / `'class_weighted_loss'`: a permutation of range(N).

Hosts split the global stream in contiguous per-batch blocks: global batch k is stream positions
`[k G, (k + 1) G)` (G = B * process_count) and process p reads `[k G + p B, k G + (p + 1) B)`, so
hosts read disjoint data, their local batches concatenate (in process order) to the global batch,
and the global batch does not depend on how many hosts there are.
"""

import sys
from typing import Sequence

import grain
import numpy as np

SAMPLING_MODES = ('oversample', 'none', 'class_weighted_loss')
SPLITS = ('train', 'validation', 'test')


def dedupe(hashes: Sequence[str], labels: Sequence[int],
           names: Sequence[str]) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
  """Drops repeated pixel content so that one picture can never land in two splits.

  Within a group of equal `hashes` the first name (sorted) of a single-label group is kept. A group
  whose copies carry different labels is a labelling conflict: all its copies are dropped.

  Returns:
    keep: bool (n,) mask; duplicates: [[kept, dropped, ...], ...];
    conflicts: [[name (label), ...], ...] (all dropped).
  """
  groups: dict[str, list[int]] = {}
  for i, h in enumerate(hashes):
    groups.setdefault(h, []).append(i)
  keep = np.ones(len(hashes), bool)
  duplicates, conflicts = [], []
  for members in groups.values():
    if len(members) == 1:
      continue
    members = sorted(members, key=lambda i: names[i])
    if len({labels[i] for i in members}) > 1:
      keep[members] = False
      conflicts.append([f'{names[i]} (label {labels[i]})' for i in members])
    else:
      keep[members[1:]] = False
      duplicates.append([names[i] for i in members])
  duplicates.sort()
  conflicts.sort()
  return keep, duplicates, conflicts


def stratified_split(labels: Sequence[int], names: Sequence[str], *, val_fraction: float,
                     test_fraction: float, seed: int) -> list[str]:
  """Assigns each example to 'train' / 'validation' / 'test', class by class.

  Per class (its examples sorted by name, then permuted by `default_rng([seed, class])`), the first
  round(n * test_fraction) go to test, the next round(n * val_fraction) to validation, the rest to
  train. The result depends only on the names, labels, fractions and seed.
  """
  labels = np.asarray(labels)
  out = [''] * len(labels)
  for c in np.unique(labels):
    idx = sorted(np.flatnonzero(labels == c), key=lambda i: names[i])
    perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
    n_test = int(round(len(idx) * test_fraction))
    n_val = int(round(len(idx) * val_fraction))
    for rank, j in enumerate(perm):
      split = 'test' if rank < n_test else 'validation' if rank < n_test + n_val else 'train'
      out[idx[j]] = split
  return out


def epoch_indices(labels: np.ndarray, num_classes: int, *, mode: str, seed: int,
                  epoch: int) -> np.ndarray:
  """The N record indices of training epoch `epoch` (see the module docstring), int64 (N,)."""
  labels = np.asarray(labels)
  n = len(labels)
  rng = np.random.default_rng([seed, epoch])
  if mode == 'oversample':
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = 1.0 / counts[labels]
    return rng.choice(n, size=n, replace=True, p=w / w.sum())
  if mode in ('none', 'class_weighted_loss'):
    return rng.permutation(n)
  raise ValueError(f'config.data.sampling={mode!r}; expected one of {SAMPLING_MODES}.')


def host_block_index(j: int, *, local_batch: int, process_index: int, process_count: int) -> int:
  """Global stream position of local position j on process p (contiguous per-batch blocks)."""
  k, r = divmod(j, local_batch)
  return (k * process_count + process_index) * local_batch + r


class EpochResampleMapDataset(grain.MapDataset):
  """Infinite stream over a parent dataset: element g is parent[epoch_indices(e)[g mod N]]."""

  def __init__(self, parent: grain.MapDataset, labels: np.ndarray, num_classes: int, *,
               mode: str, seed: int):
    super().__init__(parent)
    if mode not in SAMPLING_MODES:
      raise ValueError(f'config.data.sampling={mode!r}; expected one of {SAMPLING_MODES}.')
    self._labels = np.asarray(labels, np.int64)
    if len(self._labels) != len(parent):
      raise ValueError(f'{len(self._labels)} labels for a dataset of {len(parent)} records')
    self._num_classes = num_classes
    self._mode = mode
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}  # a few recent epochs; read by several threads

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'EpochResampleMapDataset(mode={self._mode}, seed={self._seed})'

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_cache'] = {}  # recomputed in each worker
    return state

  def record_index(self, g: int) -> int:
    """The parent index at stream position g."""
    epoch, pos = divmod(g, len(self._labels))
    draws = self._cache.get(epoch)
    if draws is None:  # threads may compute the same epoch twice; the result is identical
      draws = epoch_indices(self._labels, self._num_classes, mode=self._mode, seed=self._seed,
                            epoch=epoch)
      self._cache[epoch] = draws
      for old in sorted(self._cache)[:-4]:
        self._cache.pop(old, None)
    return int(draws[pos])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.record_index(index)]

  def _getitems(self, indices: Sequence[int]):
    return self._parent._getitems([self.record_index(g) for g in indices])  # pylint: disable=protected-access


class HostBlockMapDataset(grain.MapDataset):
  """This process's part of a global stream: contiguous blocks of `local_batch` per global batch."""

  def __init__(self, parent: grain.MapDataset, *, local_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, process_count={process_count})')
    self._kw = dict(local_batch=local_batch, process_index=process_index,
                    process_count=process_count)
    self._length = len(parent) // process_count if len(parent) < sys.maxsize else sys.maxsize

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'HostBlockMapDataset({self._kw})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[host_block_index(index, **self._kw)]

  def _getitems(self, indices: Sequence[int]):
    return self._parent._getitems([host_block_index(j, **self._kw) for j in indices])  # pylint: disable=protected-access
