"""Device prefetch: the next global batches go to the devices while the current step runs.

`flax.jax_utils.prefetch_to_device`, for `NamedSharding` and Grain checkpoints: a Grain iterator of
host-local batches becomes an iterator of global, batch-sharded `jax.Array`s with `size` batches
placed ahead. Placement is asynchronous, so the host-to-device copy of batch k+1 (and the host work
of producing it) overlaps the device work of step k.

A checkpoint must resume at the first batch not yet trained on, not after the prefetched ones:
`get_state()` is the wrapped iterator's state right after the last batch *handed out*, recorded
when that batch was fetched.
"""

import collections
import copy
from collections.abc import Callable
from typing import Any

import grain


class DevicePrefetch(grain.DatasetIterator):
  """Wraps a Grain iterator; yields `put(batch)` with `size` batches fetched and placed ahead.

  Checkpoint it like the wrapped iterator (`grain.checkpoint.CheckpointSave/Restore`).
  """

  def __init__(self, parent: grain.DatasetIterator, put: Callable[[Any], Any], size: int = 2):
    """`put`: host batch -> device batch, e.g. `sharding.global_batch(batch, mesh)`."""
    super().__init__(parent)
    self._put = put
    self._size = size
    self._queue = collections.deque()  # (device batch, parent state after fetching it)
    self._consumed_state = None  # parent state after the last batch handed out
    if size < 1:
      raise ValueError(f'prefetch size={size}: must be >= 1.')

  def __next__(self):
    while len(self._queue) < self._size:
      batch = next(self._parent)
      self._queue.append((self._put(batch), copy.deepcopy(self._parent.get_state())))
    batch, self._consumed_state = self._queue.popleft()
    return batch

  def get_state(self) -> dict[str, Any]:
    """The parent's state after the batches handed out (prefetched ones are not consumed)."""
    if self._consumed_state is None:  # nothing handed out since creation or `set_state`
      return self._parent.get_state()
    return copy.deepcopy(self._consumed_state)

  def set_state(self, state: dict[str, Any]) -> None:
    self._queue.clear()
    self._consumed_state = None
    self._parent.set_state(state)

  def close(self) -> None:
    self._queue.clear()
    super().close()
