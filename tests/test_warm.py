"""tests/warm.py: a warm run is `python -m` as a cold one (argv, environment, working directory,
device count from XLA_FLAGS, output, exit status, tracebacks, timeouts, signals)."""

import json
import signal
import subprocess
import time

import pytest

from tests import train_helpers as th
from tests import warm


def _both(args, tmp_path, devices=1):
  """(cold, warm) CompletedProcess of `python -m tests.warm_probe args`."""
  env = th.env(devices, WARM_PROBE='seen')
  return [
    warm.run_module('tests.warm_probe', args, env=env, cwd=tmp_path, timeout=120, cold=cold)
    for cold in (True, False)
  ]


def test_warm_run_sees_what_a_cold_run_sees(tmp_path):
  cold, hot = _both(['exit', 3], tmp_path, devices=4)
  assert cold.returncode == hot.returncode == 3, (cold.stderr, hot.stderr)
  seen = [json.loads(r.stdout) for r in (cold, hot)]
  assert seen[0] == seen[1], seen
  assert seen[1]['argv'][1:] == ['exit', '3'] and seen[1]['argv'][0].endswith('warm_probe.py')
  assert seen[1]['cwd'] == str(tmp_path) == seen[1]['path0']
  assert seen[1]['probe_env'] == 'seen' and seen[1]['devices'] == 4
  assert seen[1]['main'] == '__main__'
  assert cold.stderr == hot.stderr == 'to stderr\n'


def test_uncaught_exception_is_a_traceback_and_status_1(tmp_path):
  cold, hot = _both(['raise'], tmp_path)
  for r in (cold, hot):
    assert r.returncode == 1
    assert 'Traceback' in r.stderr and r.stderr.endswith('RuntimeError: probe failure\n')


def test_timeout_kills_the_run(tmp_path):
  t0 = time.monotonic()
  with pytest.raises(subprocess.TimeoutExpired):
    warm.run_module('tests.warm_probe', ['sleep', 60], env=th.env(), cwd=tmp_path, timeout=3)
  assert time.monotonic() - t0 < 30


def test_popen_pid_is_the_run_and_takes_signals(tmp_path):
  proc = warm.Popen(
    'tests.warm_probe',
    ['sleep', 60],
    env=th.env(),
    cwd=tmp_path,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  assert proc.poll() is None
  with open(f'/proc/{proc.pid}/cmdline', 'rb') as f:
    assert b'tests.warm' in f.read()  # the forked server's command line: the run's own process
  time.sleep(1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGTERM, err
  assert json.loads(out)['argv'][1:] == ['sleep', '60']
