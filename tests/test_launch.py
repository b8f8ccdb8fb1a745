"""What the launchers print and leave behind: every one starts through `launch.cli.run` (library
INFO logs off unless --verbosity); a whole training run on a folder dataset with Grain worker
processes prints a handful of lines (one per epoch, the summary, no library INFO lines), closes its
workers (no resource_tracker "leaked shared_memory" warning) and leaves no shared memory; and the
segments of a run killed with its resource tracker are removed by the next start."""

import ast
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from absl import logging as absl_logging

from jaxcxr import CLASS_NAMES_3
from jaxcxr.data import shm
from jaxcxr.training import run_log
from tests import train_helpers as th
from tests.data import helpers

# absl's prefix of an INFO / WARNING / ERROR line, e.g. "I1130 06:14:39.28", "W1206 13:50:38.17"
ABSL_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')
RUN_LINES = 6  # the dataset line, the header, 2 epochs, the test metrics, 'Results in'


def _main_calls(path) -> list[str]:
  """The calls under `if __name__ == '__main__':` as source text."""
  tree = ast.parse(path.read_text())
  for node in tree.body:
    if isinstance(node, ast.If) and "__name__ == '__main__'" in ast.unparse(node.test):
      return [
        ast.unparse(n.value.func)
        for n in node.body
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
      ]
  return []


@pytest.mark.parametrize(
  'path',
  sorted(p for p in (th.REPO / 'launch').glob('*.py') if p.stem not in {'__init__', 'cli'}),
  ids=lambda p: p.stem,
)
def test_every_launcher_starts_through_cli_run(path):
  assert _main_calls(path) == ['cli.run'], f'{path.name}: end with `cli.run(main)`'


def test_quiet_library_logs():
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    # Orbax, TFDS and Grain log through absl's logger.
    run_log.quiet_library_logs(verbose=True)  # --verbosity given: left as asked
    assert logging.getLogger('absl').isEnabledFor(logging.INFO)
    run_log.quiet_library_logs(verbose=False)
    assert absl_logging.get_verbosity() == absl_logging.WARNING
    assert not logging.getLogger('absl').isEnabledFor(logging.INFO)
    assert logging.getLogger('absl').isEnabledFor(logging.WARNING)
  finally:
    absl_logging.set_verbosity(before)


def _ours(pid: int) -> set[str]:
  """Shared-memory segments of training process `pid` (named by jaxcxr.data.shm)."""
  return {n for n in os.listdir(shm.SHM_DIR) if n.startswith(f'{shm.PREFIX}{pid}_')}


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory):
  """A tiny launch.train run on a Kaggle-layout folder with 2 Grain workers.

  Returns (combined stdout+stderr, the segments of the run seen while it ran, those left after it
  and its resource tracker exited). 100 images per class: 27 steps per epoch, enough for batches
  to be queued in the workers when training ends (a 3-step run exits before they are).
  """
  root = tmp_path_factory.mktemp('folder_run')
  folder = helpers.make_folder(root / 'kaggle', dict.fromkeys(CLASS_NAMES_3, 100), size=32)
  overrides = {
    'data.source': 'folder',
    'data.manual_dir': str(folder),
    'data.data_dir': str(root / 'tfds'),
    'data.num_workers': 2,
    'checkpoint.every_steps': 100,
  }
  proc = subprocess.Popen(
    th.train_cmd(overrides, root / 'work'),
    cwd=th.REPO,
    env=th.env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  seen = set()

  def watch():
    while proc.poll() is None:
      seen.update(_ours(proc.pid))
      time.sleep(0.05)

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  out, _ = proc.communicate(timeout=600)  # EOF: the run and its resource tracker have exited
  watcher.join()
  assert proc.returncode == 0, out[-4000:]
  return out, seen, _ours(proc.pid), root / 'work'


def test_run_prints_one_line_per_epoch_and_no_library_info(folder_run):
  out, _, _, _ = folder_run
  lines = out.splitlines()
  assert not [line for line in lines if ABSL_LINE.match(line)], out
  assert not [line for line in lines if 'warn' in line.lower()], out
  # Exactly these lines, in this order: what the dataset build did, the run's header, one line
  # per epoch, the test metrics, where the results are.
  assert len(lines) == RUN_LINES, out
  assert lines[0].startswith('Preparing the covid19_radiography dataset (3class) in ')
  assert 'parameters;' in lines[1] and lines[1].endswith('starting fresh.')
  assert [line.split(':')[0] for line in lines[2:4]] == ['epoch 1', 'epoch 2']
  assert lines[-1].startswith('Results in ') and 'test_accuracy=' in lines[-2]


@pytest.mark.parametrize(
  'args',
  [
    ['launch.predict', '--split', 'test', '--out', '{work}/p.csv'],
    ['launch.evaluate', '--split', 'test'],
  ],
  ids=['predict', 'evaluate'],
)
def test_commands_on_a_run_print_no_warning(folder_run, args):
  """The shipped checkpoint is read without Orbax's "Metadata file does not exist" warning, and
  no other library line reaches the output."""
  work = folder_run[3]
  cmd = [sys.executable, '-m', args[0], '--workdir', str(work)]
  cmd += [a.format(work=work) for a in args[1:]]
  r = subprocess.run(
    cmd, cwd=th.REPO, env=th.env(), capture_output=True, text=True, timeout=300, check=False
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = (r.stdout + r.stderr).splitlines()
  assert lines, 'the command printed nothing'
  assert not [line for line in lines if ABSL_LINE.match(line)], lines
  assert not [line for line in lines if 'warn' in line.lower()], lines


@pytest.mark.skipif(not shm.supported(), reason='needs Linux /dev/shm')
def test_run_closes_its_workers_and_leaves_no_shared_memory(folder_run):
  out, seen, left, _ = folder_run
  assert 'resource_tracker' not in out and 'leaked' not in out, out
  assert seen, 'the workers never created a psm_jaxcxr_<pid>_* segment (naming not applied?)'
  assert not left, f'left in /dev/shm: {sorted(left)}'


def _settled_segments(pid: int, timeout_s: float = 30.0) -> set[str]:
  """The segments of `pid` once the set has stopped changing for a second (workers fill their
  queues and the main process's reader thread takes what fits in its buffer, then all wait)."""
  deadline = time.time() + timeout_s
  last, since = _ours(pid), time.time()
  while time.time() < deadline:
    time.sleep(0.1)
    now = _ours(pid)
    if now != last:
      last, since = now, time.time()
    elif last and time.time() - since >= 1.0:
      break
  return last


_HOLD_ITERATOR = """
import sys, time
from configs import tiny
from jaxcxr import data
from jaxcxr.data import loader
c = tiny.get_config()
with c.unlocked():
  c.data.data_dir, c.data.num_workers = sys.argv[1], 2
it = loader.train_iterator(c.data, data.prepare(c.data, progress=False), local_batch_size=8, seed=0)
next(it)
print('ready', flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not shm.supported(), reason='needs Linux /dev/shm')
def test_segments_of_a_killed_run_are_removed_by_the_next_start(tmp_path):
  """SIGKILL to the process group (the run, its workers and its resource tracker) leaves the
  queued batches in /dev/shm; `shm.remove_stale` (run by every train_iterator with workers) removes
  exactly those, not the segments of a live process."""
  proc = subprocess.Popen(
    [sys.executable, '-c', _HOLD_ITERATOR, str(tmp_path / 'tfds')],
    cwd=th.REPO,
    env=th.env(),
    stdout=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    assert 'ready' in (line.strip() for line in proc.stdout)  # after TFDS's prepare lines
    live = _settled_segments(proc.pid)
    assert live, 'no psm_jaxcxr_<pid>_* segment while the workers run'
    # The run is alive: none of its segments is removed. (Its own reader thread may still consume
    # a queued batch meanwhile, so what remove_stale returns is the check, not a second listing.)
    assert not set(shm.remove_stale()) & live
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  time.sleep(0.5)
  stale = _ours(proc.pid)
  assert stale, 'nothing left behind: the kill did not reach the resource tracker?'
  assert stale <= set(shm.remove_stale())
  assert not _ours(proc.pid)


@pytest.mark.skipif(not shm.supported(), reason='needs Linux /dev/shm')
def test_remove_stale_takes_only_ours_of_dead_processes(tmp_path):
  child = subprocess.Popen(['true'])
  child.wait()  # its pid now names no process (a reused pid would only keep a segment)
  names = {
    f'{shm.PREFIX}{child.pid}_0a1b2c3d': 'removed (owner exited)',
    f'{shm.PREFIX}{os.getpid()}_0a1b2c3d': 'kept (owner alive)',
    'psm_0a1b2c3d': 'kept (not ours: stdlib name)',
    f'{shm.PREFIX}{child.pid}_notahexname': 'kept (not a name we make)',
  }
  for n in names:
    (tmp_path / n).write_bytes(b'x')
  removed = shm.remove_stale(str(tmp_path))
  assert removed == [n for n, what in names.items() if what.startswith('removed')]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    n for n, what in names.items() if what.startswith('kept')
  )
