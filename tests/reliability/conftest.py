"""Session fixtures of the reliability suite: prepared data, the subprocess env, the reference run,
and `record`, which tells scripts/reliability_report.py what each test injected and observed."""

import json
import os
import shutil

import pytest

from tests import train_helpers as th
from tests.reliability import harness

RECORDS_ENV = 'JAXCXR_RELIABILITY_RECORDS'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """Tiny phantom data (configs/tiny.py), prepared once and shared by every run of the suite."""
  from jaxcxr import data  # pylint: disable=g-import-not-at-top

  d = tmp_path_factory.mktemp('tfds')
  config, _ = th.tiny_config(d)
  data.prepare(config.data, progress=False)
  return d


@pytest.fixture(scope='session')
def run_env():
  """Subprocess env: CPU, one device; the suite's XLA cache comes from tests/conftest.py."""
  return th.env()


@pytest.fixture(scope='session')
def chain_overrides(data_dir):
  return {'data.data_dir': str(data_dir), **harness.CHAIN_OVERRIDES}


@pytest.fixture(scope='session')
def reference(tmp_path_factory, chain_overrides, run_env):
  """An uninterrupted run of the chain config: the bitwise target and a trained workdir."""
  work = tmp_path_factory.mktemp('reference') / 'work'
  run = harness.train_run(chain_overrides, work, work.parent / 'log.txt', run_env)
  rc = run.wait()
  assert rc == 0, run.output()[-4000:]
  return work


@pytest.fixture
def trained_copy(reference, tmp_path):
  """A private copy of the reference workdir (tests may edit or corrupt it)."""
  work = tmp_path / 'trained'
  shutil.copytree(reference, work)
  return work


@pytest.fixture
def record(request):
  """record(**fields): one JSON line per call into $JAXCXR_RELIABILITY_RECORDS (when set).

  Fields used by the report: fault=<kind> (a fault injected), bitwise=<bool> (the resumed run's
  final state equals the uninterrupted one), bad_input=<what>, clear=<bool> (the failure was a
  clear message, not a traceback), data_lost=<int> (checkpoints/rows lost that should not be).
  Call it before asserting, so failures are counted too.
  """
  path = os.environ.get(RECORDS_ENV)

  def write(**fields):
    if not path:
      return
    with open(path, 'a') as f:
      f.write(json.dumps({'test': request.node.nodeid, **fields}, default=str) + '\n')

  return write
