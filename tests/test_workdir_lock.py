"""One run per workdir: a live holder is named and refused, a dead one's lock is taken over."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from jax.experimental import multihost_utils

from jaxcxr.training import errors, workdir_lock
from tests import train_helpers as th


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **holder):
  path = workdir / workdir_lock.LOCK_FILE
  path.write_text(json.dumps(holder))
  return path


def test_second_holder_is_refused_naming_the_first_and_release_deletes(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  holder = json.loads((tmp_path / 'run.lock').read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  with pytest.raises(
    errors.WorkdirInUse,
    match=rf'in use by the run with pid {os.getpid()} on host '
    rf"'{socket.gethostname()}'.*another --workdir",
  ):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()  # a second open file: flock conflicts
  first.release()
  assert not (tmp_path / 'run.lock').exists()
  again = workdir_lock.WorkdirLock(str(tmp_path))
  again.acquire()
  again.release()


def test_stale_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path):
  dead = _dead_pid()
  _write_lock(tmp_path, host=socket.gethostname(), pid=dead, started='earlier')
  with workdir_lock.one_run(str(tmp_path)):
    assert json.loads((tmp_path / 'run.lock').read_text())['pid'] == os.getpid()
  assert not (tmp_path / 'run.lock').exists()


def test_without_flock_a_live_pid_on_this_host_still_holds(tmp_path, monkeypatch):
  """Filesystems without flock: the pid check alone decides on this host."""

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_flock)
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _write_lock(tmp_path, host=socket.gethostname(), pid=sleeper.pid)
    with pytest.raises(errors.WorkdirInUse, match=f'pid {sleeper.pid}'):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()  # the pid is gone now
  lock.release()


def test_other_host_holds_until_its_heartbeat_is_stale(tmp_path):
  path = _write_lock(tmp_path, host='vm-that-died', pid=1234, started='earlier')
  with pytest.raises(errors.WorkdirInUse, match=r"pid 1234 on host 'vm-that-died'.*delete"):
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600).acquire()
  old = time.time() - 601
  os.utime(path, (old, old))  # no heartbeat for over 10 minutes
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600)
  lock.acquire()
  lock.release()


def test_holder_heartbeat_touches_the_lock_file(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  old = time.time() - 1000
  os.utime(tmp_path / 'run.lock', (old, old))
  time.sleep(0.5)
  assert time.time() - os.stat(tmp_path / 'run.lock').st_mtime < 10
  lock.release()


def test_only_process_zero_takes_it_and_all_fail_together(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all', lambda x: x * False)
  with workdir_lock.one_run(str(tmp_path)):
    assert not (tmp_path / 'run.lock').exists()
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all', lambda x: x | True)
  with (
    pytest.raises(errors.WorkdirInUse, match='see process 0'),
    workdir_lock.one_run(str(tmp_path)),
  ):
    pass


def test_second_launch_fails_at_once_naming_the_first_and_kill9_leaves_no_block(tmp_path):
  """Two `launch.train` on one workdir: the second exits 2 naming the first's pid and host. After
  the first is killed with SIGKILL its lock file remains, but the next run takes it over."""
  work = tmp_path / 'work'
  overrides = {'data.data_dir': tmp_path / 'tfds', 'train.num_epochs': 100}
  first = subprocess.Popen(
    th.train_cmd(overrides, work),
    cwd=th.REPO,
    env=th.env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    t0 = time.time()
    while not (work / 'run.lock').exists() or not (work / 'run.lock').read_text():
      assert first.poll() is None, first.stderr.read()
      assert time.time() - t0 < 300, 'the first run never took the lock'
      time.sleep(0.1)
    second = th.run_train(overrides, work, timeout=300)
    assert second.returncode == errors.EXIT_USAGE, second.stderr
    assert (
      f'in use by the run with pid {first.pid} on host {socket.gethostname()!r}' in second.stderr
    )
    assert first.poll() is None  # the first run is unaffected
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert json.loads((work / 'run.lock').read_text())['pid'] == first.pid  # left behind
  with workdir_lock.one_run(str(work)):  # what the re-run does first: it is not blocked
    assert json.loads((work / 'run.lock').read_text())['pid'] == os.getpid()
