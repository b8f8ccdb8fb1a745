"""jaxcxr.checkpoint under faults, in-process and fast: unreadable checkpoints, a full disk in the
middle of a save (injected ENOSPC, sync and async), and an unwritable workdir."""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import checkpoint
from tests import train_helpers as th
from tests.reliability import harness


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
  restored = checkpoint.Checkpointer(str(tmp_path), async_save=False).restore_latest(_ABSTRACT,
                                                                                    fresh)
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
