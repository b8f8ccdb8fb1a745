"""jaxcxr.training.checkpoint under faults, in-process and fast: unreadable checkpoints, a full
disk in the middle of a save (injected ENOSPC, sync and async), and an unwritable workdir."""

import errno
import json
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.training import checkpoint, loop
from tests import train_helpers as th
from tests.reliability import fault_driver, harness


def _state(value: float) -> dict:
  return {'w': jnp.full((64, 64), value, jnp.float32), 'step': jnp.asarray(int(value), jnp.int32)}


_ABSTRACT = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0.0))


def _truncate_state(step_dir):
  state = step_dir / 'state'
  victim = max((p for p in state.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(victim, victim.stat().st_size // 2)


@pytest.fixture
def train_iter(data_dir):
  from jaxcxr import data  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import loader  # pylint: disable=g-import-not-at-top

  config, _ = th.tiny_config(data_dir)
  handle = data.prepare(config.data, progress=False)

  def make():
    return loader.train_iterator(config.data, handle, local_batch_size=8, seed=0)

  return make


def test_unreadable_only_checkpoint_restarts_data_at_the_beginning(tmp_path, train_iter, record):
  """A fresh start after skipping an unreadable checkpoint must also start the data stream fresh
  (a failed restore attempt used to leave the iterator at the bad checkpoint's position)."""
  first = next(train_iter())['label']
  it = train_iter()
  for _ in range(3):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(3, _state(3.0), it, {'epoch': 0})
  ckpt.wait()
  _truncate_state(tmp_path / 'checkpoints' / '3')
  fresh = train_iter()
  restored = checkpoint.Checkpointer(str(tmp_path), async_save=False).restore_latest(
    _ABSTRACT, fresh
  )
  got = next(fresh)['label']
  record(fault='truncated_only_checkpoint', data_stream_restarted=bool(np.array_equal(got, first)))
  assert restored is None
  np.testing.assert_array_equal(got, first)


def test_unreadable_checkpoint_is_rewritten_when_its_step_comes_again(tmp_path, record):
  """Resuming before an unreadable step and training past it must replace it with a good one
  (it used to be kept as the newest checkpoint: every later resume went back past it)."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(step), None, {'step': step})
  ckpt.wait()
  _truncate_state(tmp_path / 'checkpoints' / '2')
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  step, state, host = ckpt.restore_latest(_ABSTRACT, None)
  assert (step, host) == (1, {'step': 1}) and float(state['w'][0, 0]) == 1.0
  ckpt.save(2, _state(2.5), None, {'step': 2})
  ckpt.wait()
  ok = harness.readable(tmp_path / 'checkpoints' / '2')
  record(fault='truncated_checkpoint_resaved', rewritten=ok)
  assert ok
  tree = checkpoint.read_state_numpy(str(tmp_path / 'checkpoints' / '2'))
  np.testing.assert_array_equal(tree['w'], np.full((64, 64), 2.5, np.float32))
  assert checkpoint.Checkpointer(str(tmp_path)).restore_latest(_ABSTRACT, None)[0] == 2


def _can_mount() -> bool:
  return os.geteuid() == 0 and shutil.which('mount') is not None


@pytest.fixture
def tiny_tmpfs(tmp_path):
  """A 1 MiB tmpfs (a disk that really fills up); skipped where mounting is not permitted."""
  mnt = tmp_path / 'tmpfs'
  mnt.mkdir()
  r = (
    subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)],
      capture_output=True,
      text=True,
      check=False,
    )
    if _can_mount()
    else None
  )
  if r is None or r.returncode:
    pytest.skip(
      f'cannot mount a tmpfs here ({r.stderr.strip() if r else "not root"}); the '
      'injected-ENOSPC tests cover the same path'
    )
  yield mnt
  subprocess.run(['umount', '-l', str(mnt)], check=False)


def _save_and_wait(ckpt, step: int, state: dict) -> None:
  ckpt.save(step, state, None, {'step': step})
  ckpt.wait()


def _check_disk_full(err, directory, record, how, ckpt_root):
  msg = str(err)
  intact = harness.readable(ckpt_root / 'checkpoints' / '1')
  resumed = checkpoint.Checkpointer(str(ckpt_root), async_save=False).restore_latest(
    _ABSTRACT, None
  )
  record(
    fault=f'disk_full_{how}',
    bad_input=f'disk full at a checkpoint save ({how})',
    clear=('the disk is full' in msg and str(directory) in msg),
    data_lost=int(not intact or resumed is None or resumed[0] != 1),
  )
  assert isinstance(err, checkpoint.CheckpointWriteError) and err.errno == errno.ENOSPC
  assert msg.startswith(f'Could not write a checkpoint to {directory}: the disk is full')
  assert 'already there are intact' in msg and 're-run the same command' in msg
  assert intact
  assert resumed[0] == 1 and float(resumed[1]['w'][0, 0]) == 1.0


@pytest.mark.parametrize('async_save', [False, True], ids=['sync', 'async'])
def test_injected_enospc_mid_save_is_clear_and_keeps_earlier_checkpoints(
  tmp_path, monkeypatch, async_save, record
):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=async_save)
  ckpt.save(1, _state(1.0), None, {'step': 1})
  ckpt.wait()
  handler = fault_driver.json_handler()
  monkeypatch.setattr(handler, '_save_fn', fault_driver.enospc_save_fn(1))
  with pytest.raises(checkpoint.CheckpointWriteError) as e:
    _save_and_wait(ckpt, 2, _state(2.0))  # async: the failure surfaces in wait()
  monkeypatch.undo()
  assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] != ['1']  # the cut-short save
  _check_disk_full(
    e.value,
    tmp_path / 'checkpoints',
    record,
    'injected_' + ('async' if async_save else 'sync'),
    tmp_path,
  )


def test_real_full_disk_mid_save_is_clear_and_keeps_earlier_checkpoints(tiny_tmpfs, record):
  """TensorStore reports a full disk as ValueError('... [os_error_code='28']'), not OSError."""
  ckpt = checkpoint.Checkpointer(str(tiny_tmpfs), async_save=True)
  ckpt.save(1, _state(1.0), None, {'step': 1})
  ckpt.wait()
  big = {
    'w': jnp.full((64, 64), 2.0),
    'step': jnp.asarray(2, jnp.int32),
    'noise': jax.random.normal(jax.random.key(0), (512, 1024)),
  }  # 2 MiB, incompressible
  with pytest.raises(checkpoint.CheckpointWriteError) as e:
    _save_and_wait(ckpt, 2, big)
  _check_disk_full(e.value, tiny_tmpfs / 'checkpoints', record, 'tmpfs', tiny_tmpfs)


def test_unwritable_workdir_fails_before_any_work(tmp_path, monkeypatch, record):
  """As root, permission bits do not stop writes, so the two real cases are a path under a regular
  file (any user) and an injected EROFS (what a read-only mount returns; the CLI test in
  test_bad_inputs.py uses a real read-only bind mount where mounting is permitted)."""
  config, _ = th.tiny_config(tmp_path / 'unused')
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises((ValueError, OSError)) as e:
    loop.train_and_evaluate(config, str(blocker / 'run'))
  record(
    bad_input='workdir under a regular file (in-process)',
    clear=str(blocker / 'run') in str(e.value),
  )
  assert str(blocker / 'run') in str(e.value)

  work = tmp_path / 'readonly'
  work.mkdir()

  def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(work))

  monkeypatch.setattr(tempfile, 'mkstemp', erofs)
  with pytest.raises(ValueError, match=r'is not writable \(Read-only file system\)') as e:
    checkpoint.write_config(str(work), config)
  msg = str(e.value)
  record(bad_input='read-only workdir (injected EROFS)', clear='is not writable' in msg)
  assert msg.startswith(f'--workdir={str(work)!r} is not writable (Read-only file system)')
  assert not (work / 'config.json').exists()


def test_partial_last_metrics_row_does_not_block_the_resume(tmp_path, record):
  """A full disk can cut the last metrics.jsonl row short (a kill -9 cannot: one small write).
  After space is freed, the resumed run must still open its log."""
  from jaxcxr.training import run_log  # pylint: disable=g-import-not-at-top

  rows = [{'kind': 'train', 'step': s, 'loss': 1.0} for s in (1, 2, 3)]
  (tmp_path / 'metrics.jsonl').write_text(
    ''.join(json.dumps(r) + '\n' for r in rows) + '{"kind": "train", "st'
  )
  try:
    run_log.RunLog(str(tmp_path), resume_step=2).close()
    ok = True
  except ValueError:
    ok = False
  record(fault='partial_metrics_row', bad_input='partial last row of metrics.jsonl', clear=ok)
  assert ok
  assert [r['step'] for r in run_log.read_rows(str(tmp_path))] == [1, 2]
