"""Subprocess runs, waits, checkpoint inspection and corruption for the reliability suite."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import train_helpers as th
from tests import warm

REPO = th.REPO

# Every run of the fault chain and its uninterrupted reference: 3 epochs of 5 steps, a periodic
# checkpoint every 3 steps plus one at each epoch end, async saves (so a save can be caught in
# flight). Only data.data_dir is added per session.
# select='best': the fault counts (the n-th checkpoint write) were laid out for a best/ save at
# every improving epoch; the 'last' rule writes best/ once, at the end (a full disk during that
# save: test_training_faults.py::test_disk_full_at_the_final_shipped_save_then_resume).
CHAIN_OVERRIDES = {
  'train.num_epochs': 3,
  'checkpoint.every_steps': 3,
  'checkpoint.async_save': True,
  'early_stopping.select': 'best',
  'early_stopping.metric': 'val_macro_f1',
  'early_stopping.mode': 'max',
  **th.LEAN_REPORT,  # the suite reads checkpoints, logs and exit statuses, not the report
}
STEPS_PER_EPOCH = 5
TOTAL_STEPS = 15


class Run:
  """A background subprocess whose stderr/stdout go to files (a pipe could fill and block it)."""

  def __init__(self, module: str, args: list[str], log: Path, env: dict):
    self.log = Path(log)
    self.log.parent.mkdir(parents=True, exist_ok=True)
    self._out = open(self.log, 'w')  # noqa: SIM115 (held while the run lives; kill() or wait() closes it)
    self.t0 = time.time()
    self.proc = warm.popen(  # python -m module args, started warm (tests/warm.py)
      module, args, env=env, cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT
    )

  def wait_for(self, predicate, timeout: float = 300, poll: float = 0.01, what: str = ''):
    """Polls `predicate` until true; fails if the process ends first or the timeout passes."""
    t0 = time.time()
    while not predicate():
      if self.proc.poll() is not None:
        raise AssertionError(
          f'run ended ({self.proc.returncode}) before {what or predicate}:\n'
          + self.output()[-4000:]
        )
      if time.time() - t0 > timeout:
        self.kill()
        raise AssertionError(f'timed out after {timeout} s waiting for {what or predicate}')
      time.sleep(poll)

  def kill(self):
    """kill -9 (SIGKILL) and reap."""
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait()
    self._out.close()

  def wait(self, timeout: float = 600) -> int:
    rc = self.proc.wait(timeout=timeout)
    self._out.close()
    return rc

  def output(self) -> str:
    if not self._out.closed:
      self._out.flush()
    return self.log.read_text(errors='replace')


def train_run(overrides: dict, workdir, log, env: dict, driver_fault: str = '') -> Run:
  """launch.train (or, with `driver_fault`, tests.reliability.fault_driver) in the background."""
  module = 'launch.train'
  if driver_fault:
    module = 'tests.reliability.fault_driver'
    env = dict(env, JAXCXR_FAULT=driver_fault)
  return Run(module, th.train_args(overrides, workdir), log, env)


def rows(workdir, kind: str | None = None) -> list[dict]:
  """metrics.jsonl rows (a line still being written is ignored)."""
  p = Path(workdir) / 'metrics.jsonl'
  if not p.exists():
    return []
  out = []
  for line in p.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    if kind is None or r.get('kind') == kind:
      out.append(r)
  return out


def last_train_step(workdir) -> int:
  steps = [r['step'] for r in rows(workdir, 'train')]
  return max(steps) if steps else 0


def committed_steps(directory) -> list[int]:
  """Finalised Orbax steps (Orbax renames `<step>.orbax-checkpoint-tmp` to `<step>` when done)."""
  d = Path(directory)
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def tmp_dirs(workdir) -> list[Path]:
  """Orbax temporary directories of saves in flight (or of saves a crash cut short)."""
  out = []
  for sub in ('checkpoints', 'best'):
    d = Path(workdir) / sub
    if d.is_dir():
      out += [p for p in d.iterdir() if '.orbax-checkpoint-tmp' in p.name]
  return out


def corrupt_latest(workdir) -> tuple[int, Path]:
  """Truncates the largest array file of the newest periodic checkpoint to half its size."""
  step = committed_steps(Path(workdir) / 'checkpoints')[-1]
  state = Path(workdir) / 'checkpoints' / str(step) / 'state'
  victim = max((p for p in state.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(victim, victim.stat().st_size // 2)
  return step, victim


def readable(step_dir) -> bool:
  from jaxcxr.training import checkpoint  # pylint: disable=g-import-not-at-top

  try:
    checkpoint.read_state_numpy(str(step_dir))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def resumed_step(output: str) -> int:
  """The step a run said it resumed at (0 when it started fresh)."""
  for line in output.splitlines():
    if 'resuming at step ' in line:
      return int(line.split('resuming at step ')[1].rstrip('.').split()[0].rstrip('.'))
    if 'starting fresh' in line:
      return 0
  raise AssertionError('the run never said where it started:\n' + output[-3000:])


def cli(module: str, *args, env: dict, timeout: float = 300) -> subprocess.Popen:
  """Starts `python -m module args` with captured text output (use .communicate())."""
  return subprocess.Popen(
    [sys.executable, '-m', module, *map(str, args)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


MESSAGE_STARTS = ('error:', 'FATAL Flags parsing error')


def _is_log_line(line: str) -> bool:
  """absl log lines: 'I1125 23:35:23.832684 1404 file.py:76] ...' (also W, E, F)."""
  return len(line) > 5 and line[0] in 'IWEF' and line[1:5].isdigit() and line[5] == ' '


def message(stderr: str, starts: tuple[str, ...] = MESSAGE_STARTS) -> str:
  """The user-facing message a failed CLI ended with: from its last line that begins with one of
  `starts` ('error:', ...) to the end, absl log lines dropped ('' when there is none)."""
  lines = stderr.splitlines()
  first = [i for i, line in enumerate(lines) if line.startswith(starts)]
  if not first:
    return ''
  return '\n'.join(line for line in lines[first[-1] :] if not _is_log_line(line))


def clear_failure(
  rc: int, stderr: str, want_rc: int, *needles: str, starts: tuple[str, ...] = MESSAGE_STARTS
) -> list[str]:
  """Problems with a failed CLI run ([] = a clear failure).

  Clear means: the documented exit status, and the run ends with a message that starts with
  'error:' (ours) or 'FATAL Flags parsing error' (absl's) and contains every needle, with no
  traceback after it. Tracebacks that libraries log earlier (Orbax logs failed saves at ERROR
  level) are not the user-facing failure and are allowed.
  """
  problems = []
  if rc != want_rc:
    problems.append(f'exit status {rc}, expected {want_rc}')
  msg = message(stderr, starts)
  if not msg:
    tail = '\n'.join(line for line in stderr.splitlines() if not _is_log_line(line))[-1500:]
    problems.append(f'no error message at the end of stderr; it ends with:\n{tail}')
    return problems
  if 'Traceback (most recent call last)' in msg:
    problems.append('a traceback follows the message')
  for needle in needles:
    if needle not in msg:
      problems.append(f'the message lacks {needle!r}: {msg[:1500]}')
  return problems
