"""One run per workdir: a lock file, `<workdir>/run.lock`, held for the whole run.

Two runs on one workdir would interleave `metrics.jsonl` rows and overwrite each other's
checkpoints, so a second run fails at once with `WorkdirInUse`, naming the holder (host, pid,
start time). The lock file holds that JSON; the holder keeps an exclusive `flock` on it and touches
it (its modification time is the heartbeat) every `HEARTBEAT_S` seconds.

A lock left behind does not block the re-run that resumes it:
- same host: the kernel drops a `flock` when its process dies (`kill -9`, OOM kill, crash), so a
  lock file naming this host that can be flocked is stale and is taken over. Where the filesystem
  does not support `flock`, a holder on this host is stale when its pid is not running.
- another host (a shared filesystem, where `flock` does not reach across hosts): stale once its
  heartbeat is older than `STALE_AFTER_S` (10 minutes; a host that died is waited out, or the user
  deletes the file as the error message says).
With several processes (multi-host), only process 0 takes the lock; it tells the others whether it
got it, so every process fails together. The lock is released (file deleted) when the run ends,
however it ends.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxcxr.training.errors import WorkdirInUse

LOCK_FILE = 'run.lock'
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read_holder(path: str) -> dict:
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):  # vanished, or being written
    return {}


def _describe(holder: dict, path: str) -> str:
  if not holder:
    return f'another run (its lock file {path} is being written)'
  return (
    f'the run with pid {holder.get("pid")} on host {holder.get("host")!r}, started '
    f'{holder.get("started", "?")}'
  )


class WorkdirLock:
  """The lock of one workdir, held by this process (see the module docstring)."""

  def __init__(
    self, workdir: str, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
  ):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.stale_after_s = stale_after_s
    self.heartbeat_s = heartbeat_s
    self._fd = None
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirInUse naming the live holder."""
    for _ in range(10):  # retried only when the holder released (deleted) the file meanwhile
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        if self._try_take(fd):
          self._fd = fd
          break
      except BaseException:
        os.close(fd)
        raise
      os.close(fd)
    else:
      raise WorkdirInUse(f'Could not take {self.path}: it keeps being replaced by another run.')
    self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat', daemon=True)
    self._thread.start()

  def _try_take(self, fd: int) -> bool:
    """True when `fd` now holds the lock; False when the file was deleted under us (retry)."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:  # a live process on this host holds it
      raise WorkdirInUse(self._message(_read_holder(self.path))) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      flocked = False  # no flock on this filesystem: pid and heartbeat checks only
    try:
      if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
        return False
    except FileNotFoundError:
      return False
    holder = _read_holder(self.path)
    me = {'host': socket.gethostname(), 'pid': os.getpid()}
    if holder and {k: holder.get(k) for k in me} != me:
      if holder.get('host') == me['host']:
        stale = flocked or not _pid_running(int(holder.get('pid', -1)))
      else:
        stale = time.time() - os.fstat(fd).st_mtime > self.stale_after_s
      if not stale:
        raise WorkdirInUse(self._message(holder))
      logging.warning(
        'Taking over the stale lock %s of %s (no longer running).',
        self.path,
        _describe(holder, self.path),
      )
    record = {**me, 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
    os.fsync(fd)
    return True

  def _message(self, holder: dict) -> str:
    return (
      f'The workdir {os.path.dirname(self.path)} is in use by {_describe(holder, self.path)}: '
      "two runs on one workdir would overwrite each other's checkpoints and logs. Wait for "
      'it to end (or stop it), or use another --workdir. If that run is gone (its host '
      f'died), delete {self.path}; a lock from another host is also taken over '
      f'{self.stale_after_s:.0f} s after its last heartbeat.'
    )

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      # The workdir vanished or went read-only: the run itself will report it.
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    """Deletes the lock file (if still ours) and drops the lock."""
    if self._fd is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
        os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)  # drops the flock
    self._fd = None


@contextlib.contextmanager
def one_run(workdir: str, **kwargs):
  """Holds the workdir's lock for the body (process 0 only; every process fails together).

  Raises:
    WorkdirInUse: another live run holds the workdir (the message names its host and pid).
  """
  lock = WorkdirLock(workdir, **kwargs)
  try:
    error = None
    if jax.process_index() == 0:
      try:
        lock.acquire()
      except WorkdirInUse as e:
        error = e
    if jax.process_count() > 1:
      failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None)))
      if failed and error is None:
        error = WorkdirInUse(f'The workdir {workdir} is in use by another run (see process 0).')
    if error is not None:
      raise error
    yield lock
  finally:
    lock.release()
