"""Index bookkeeping: de-duplication, stratified (group-keeping) splits, epoch draws, host sharding.

The training stream is a Grain `MapDataset` of infinite length whose position `g` is
`(epoch, pos) = divmod(g, N)` with N = number of training examples; epoch e is one array of N record
indices drawn from `(seed, e)`:

- `'balanced'`: exactly N / K draws of each of the K classes present (the remainder rotates over
  the classes from epoch to epoch), WITHOUT replacement: each class reads its own endless stream of
  permutations of its records (`class_stream`), epoch after epoch, and the epoch's draws are then
  shuffled together. A class with more than N / K records is read in turn over several epochs
  (every record once before any record twice); a smaller class is repeated only as often as
  needed (each record floor or ceil(N / K / count) times). When the classes are balanced, an epoch
  is a permutation of range(N): every record once.
- `'oversample'`: N draws WITH replacement, P(i) proportional to 1 / count(class of i) (PyTorch
  `WeightedRandomSampler(weights, N, replacement=True)` semantics: every class is drawn equally
  often in expectation, but an epoch sees only ~1 - 1/e = 63% of a balanced class's records);
- `'none'` / `'class_weighted_loss'`: a permutation of range(N).

Hosts split the global stream in contiguous per-batch blocks: global batch k is stream positions
`[k G, (k + 1) G)` (G = B * process_count) and process p reads `[k G + p B, k G + (p + 1) B)`, so
hosts read disjoint data, their local batches concatenate (in process order) to the global batch,
and the global batch does not depend on how many hosts there are.
"""

import collections
import sys
from collections.abc import Sequence

import grain
import numpy as np

SAMPLING_MODES = ('balanced', 'oversample', 'none', 'class_weighted_loss')
SPLITS = ('train', 'validation', 'test')


def dedupe(
  hashes: Sequence[str], labels: Sequence[int], names: Sequence[str]
) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
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


_GROUP_STREAM = 1 << 20  # random stream of the group placement; class c's is (seed, c)


def stratified_split(
  labels: Sequence[int],
  names: Sequence[str],
  *,
  val_fraction: float,
  test_fraction: float,
  seed: int,
  groups: Sequence[Sequence[int]] = (),
) -> list[str]:
  """Assigns each example to 'train' / 'validation' / 'test', class by class, groups whole.

  Per class, round(n * test_fraction) examples go to test, round(n * val_fraction) to validation
  and the rest to train (n: the class's examples, grouped or not).

  `groups` (index lists, e.g. look-alike films from `lookalikes.near_duplicates`) are placed
  first, each whole into one split: largest first (then by first name), into a split where every
  one of its classes still has room for its members, drawn with probability proportional to that
  room (so groups land in test about as often as single films do); a group that fits nowhere goes
  where it overflows least (train on ties). A group whose members carry different labels is
  placed the same way, each member counting against its own class. The other examples of each
  class (sorted by name, then permuted by `default_rng([seed, class])`) fill what is left: the
  first go to test, the next to validation, the rest to train. So the per-class counts are the
  targets above unless a group overflowed, and without groups the split is the one of jaxcxr's
  first dataset version (1.0.0). The result depends only on the names, labels, groups, fractions
  and seed.

  Raises:
    ValueError: an example is in two groups.
  """
  labels = np.asarray(labels)
  out = [''] * len(labels)
  classes = [int(c) for c in np.unique(labels)]
  room = {'test': {}, 'validation': {}, 'train': {}}
  for c in classes:
    n = int(np.sum(labels == c))
    room['test'][c] = round(n * test_fraction)
    room['validation'][c] = round(n * val_fraction)
    room['train'][c] = n - room['test'][c] - room['validation'][c]
  grouped = _place_groups(labels, names, groups, room, seed, out)
  for c in classes:
    idx = sorted(
      (i for i in np.flatnonzero(labels == c) if i not in grouped), key=lambda i: names[i]
    )
    perm = np.random.default_rng([seed, c]).permutation(len(idx))
    n_test = max(room['test'][c], 0)
    n_val = max(room['validation'][c], 0)
    for rank, j in enumerate(perm):
      split = 'test' if rank < n_test else 'validation' if rank < n_test + n_val else 'train'
      out[idx[j]] = split
  return out


def _place_groups(
  labels: np.ndarray,
  names: Sequence[str],
  groups: Sequence[Sequence[int]],
  room: dict,
  seed: int,
  out: list[str],
) -> set[int]:
  """Puts each group whole into one split (see `stratified_split`); updates `room` and `out`.

  Returns:
    The indices placed.
  """
  placed: set[int] = set()
  for g in groups:
    if placed & set(g):
      raise ValueError(f'Example(s) {sorted(placed & set(g))} belong to more than one group.')
    placed |= {int(i) for i in g}
  rng = np.random.default_rng([seed, _GROUP_STREAM])
  for g in sorted(groups, key=lambda g: (-len(g), min(names[i] for i in g))):
    need = collections.Counter(int(labels[i]) for i in g)
    fits = [s for s in SPLITS if all(room[s][c] >= k for c, k in need.items())]
    if fits:
      weight = np.array([sum(room[s][c] for c in need) for s in fits], np.float64)
      split = fits[rng.choice(len(fits), p=weight / weight.sum())]
    else:
      split = min(
        SPLITS,
        key=lambda s: (sum(max(k - room[s][c], 0) for c, k in need.items()), SPLITS.index(s)),
      )
    for c, k in need.items():
      room[split][c] -= k
    for i in g:
      out[i] = split
  return placed


def class_quota(num_draws: int, num_classes: int, c: int, epoch: int) -> int:
  """Draws of the c-th of `num_classes` classes in `epoch`: N // K, +1 for N % K classes in turn."""
  q, r = divmod(num_draws, num_classes)
  return q + int((c - epoch) % num_classes < r)


def _quota_before(num_draws: int, num_classes: int, c: int, epoch: int) -> int:
  """Sum of `class_quota` over epochs 0 .. epoch - 1 (where the class's stream is at)."""
  q, r = divmod(num_draws, num_classes)
  full, rest = divmod(epoch, num_classes)
  extra = sum((c - e) % num_classes < r for e in range(rest))
  return epoch * q + full * r + extra


def class_stream(
  members: np.ndarray, start: int, count: int, *, seed: int, label: int
) -> np.ndarray:
  """Positions [start, start + count) of a class's endless stream of record indices.

  The stream concatenates permutations of `members` (cycle k drawn from (seed, label, k)): each
  record is drawn once per cycle, so a window inside one cycle never repeats a record (one that
  straddles two cycles may).
  """
  n = len(members)
  out = []
  for cycle in range(start // n, (start + count - 1) // n + 1):
    perm = members[np.random.default_rng([seed, label, cycle]).permutation(n)]
    lo, hi = max(start - cycle * n, 0), min(start + count - cycle * n, n)
    out.append(perm[lo:hi])
  return np.concatenate(out) if out else np.zeros(0, np.int64)


def _balanced_epoch(labels: np.ndarray, num_classes: int, seed: int, epoch: int) -> np.ndarray:
  present = [c for c in range(num_classes) if np.any(labels == c)]
  n, k = len(labels), len(present)
  draws = []
  for j, c in enumerate(present):
    members = np.flatnonzero(labels == c)
    draws.append(
      class_stream(
        members, _quota_before(n, k, j, epoch), class_quota(n, k, j, epoch), seed=seed, label=c
      )
    )
  draws = np.concatenate(draws)
  return draws[np.random.default_rng([seed, epoch]).permutation(len(draws))]


def epoch_indices(
  labels: np.ndarray, num_classes: int, *, mode: str, seed: int, epoch: int
) -> np.ndarray:
  """The N record indices of training epoch `epoch` (see the module docstring), int64 (N,)."""
  labels = np.asarray(labels)
  n = len(labels)
  if mode == 'balanced':
    return _balanced_epoch(labels, num_classes, seed, epoch).astype(np.int64)
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

  def __init__(
    self, parent: grain.MapDataset, labels: np.ndarray, num_classes: int, *, mode: str, seed: int
  ):
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
      draws = epoch_indices(
        self._labels, self._num_classes, mode=self._mode, seed=self._seed, epoch=epoch
      )
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

  def __init__(
    self, parent: grain.MapDataset, *, local_batch: int, process_index: int, process_count: int
  ):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, process_count={process_count})')
    self._kw = dict(
      local_batch=local_batch, process_index=process_index, process_count=process_count
    )
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
