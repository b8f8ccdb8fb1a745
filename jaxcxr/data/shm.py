"""Shared memory of the Grain worker processes: segments named by their run, stale ones removed.

Grain's workers hand each batch to the training process in POSIX shared memory
(`multiprocessing.shared_memory`: /dev/shm/psm_<8 random hex>), which the training process unlinks
once it has used the batch; closing the loader iterator unlinks the ones still queued. Python's
resource tracker unlinks what is left when the training process dies. A run killed together with
its tracker (SIGKILL to the process group, the OOM killer) leaves its segments behind, and the
stdlib's random names say nothing about whose they are: other programs on the machine use the
same names, so none of them can be removed safely.

So our workers name their segments `psm_jaxcxr_<pid of the training process>_<random>` (on Linux,
where /dev/shm has no short name limit), and `remove_stale` unlinks only those whose training
process no longer exists and that belong to this user. A reused pid makes a segment look alive:
it is then kept, never removed wrongly.
"""

import functools
import os
import re
import secrets
import sys
from collections.abc import Callable
from multiprocessing import shared_memory

from absl import logging

PREFIX = 'psm_jaxcxr_'
SHM_DIR = '/dev/shm'
_NAME = re.compile(rf'{PREFIX}(\d+)_[0-9a-f]+')


def supported() -> bool:
  """Whether segment names can carry the owner (Linux: /dev/shm, no 14-character name limit)."""
  return (
    sys.platform.startswith('linux')
    and os.path.isdir(SHM_DIR)
    and callable(getattr(shared_memory, '_make_filename', None))
  )


def _name_segments_for(owner_pid: int, worker_index: int, worker_count: int) -> None:
  """Runs in a Grain worker: its new segments are named after the training process."""
  del worker_index, worker_count

  def make_filename() -> str:
    return f'/{PREFIX}{owner_pid}_{secrets.token_hex(4)}'

  # The stdlib draws every new segment's name from this module function (Python 3.8-3.13).
  shared_memory._make_filename = make_filename  # pylint: disable=protected-access


def worker_init_fn() -> Callable[[int, int], None] | None:
  """`worker_init_fn` for `mp_prefetch` naming the workers' segments after this process."""
  return functools.partial(_name_segments_for, os.getpid()) if supported() else None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def remove_stale(shm_dir: str = SHM_DIR) -> list[str]:
  """Unlinks our segments whose training process has exited; returns their names."""
  if not supported():
    return []
  removed = []
  for name in sorted(os.listdir(shm_dir)):
    match = _NAME.fullmatch(name)
    if not match or _alive(int(match.group(1))):
      continue
    path = os.path.join(shm_dir, name)
    try:
      if os.stat(path).st_uid != os.getuid():
        continue
      os.unlink(path)
    except FileNotFoundError:  # another process cleaned it up first
      continue
    removed.append(name)
  if removed:
    logging.warning(
      'Removed %d shared-memory segment(s) left in %s by killed runs: %s',
      len(removed),
      shm_dir,
      ', '.join(removed[:5]) + (' ...' if len(removed) > 5 else ''),
    )
  return removed
