"""DevicePrefetch: batches placed ahead on the devices; checkpoints count consumed batches only."""

import functools

import grain
import jax
import numpy as np
import pytest

from jaxcxr.training import checkpoint as ckpt_lib
from jaxcxr.training import prefetch, sharding


def _source():
  """A Grain iterator of {'x': (2,) int32} batches holding 2k, 2k+1 at position k."""
  ds = grain.MapDataset.range(40).map(lambda i: {'x': np.int32(i)}).batch(2)
  return iter(ds.to_iter_dataset())


def _prefetched(put_log=None, size=2):
  mesh = sharding.make_mesh()

  def put(batch):
    if put_log is not None:
      put_log.append(int(batch['x'][0]))
    return sharding.global_batch(batch, mesh)

  return prefetch.DevicePrefetch(_source(), put, size=size)


def test_batches_are_placed_ahead_with_the_batch_sharding():
  placed = []
  it = _prefetched(placed, size=2)
  first = next(it)
  assert isinstance(first['x'], jax.Array)
  assert first['x'].sharding == sharding.batch_sharding(sharding.make_mesh())
  assert placed == [0, 2]  # batch 1 is on the devices while step 0 runs
  got = [first] + [next(it) for _ in range(4)]
  assert placed == [0, 2, 4, 6, 8, 10]
  np.testing.assert_array_equal(np.concatenate([np.asarray(b['x']) for b in got]), np.arange(10))


def test_state_is_after_the_consumed_batches_not_the_prefetched_ones():
  it = _prefetched(size=2)
  for _ in range(3):
    next(it)
  plain = _source()
  for _ in range(3):
    next(plain)
  assert it.get_state() == plain.get_state()
  assert it._parent.get_state() != plain.get_state()  # pylint: disable=protected-access

  resumed = _prefetched(size=2)
  resumed.set_state(it.get_state())
  np.testing.assert_array_equal(np.asarray(next(resumed)['x']), [6, 7])  # batch 3, not 4
  np.testing.assert_array_equal(np.asarray(next(it)['x']), [6, 7])


def test_orbax_checkpoint_round_trip_resumes_at_the_next_batch(tmp_path):
  """Saved and restored by the run's Checkpointer (Grain's Orbax handler) like a Grain iterator."""
  it = _prefetched(size=2)
  for _ in range(4):
    next(it)
  state = {'w': np.zeros(3, np.float32)}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(4, state, it, {'note': 'x'})
  checkpointer.wait()
  resumed = _prefetched(size=2)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  step, _, _ = checkpointer.restore_latest(abstract, resumed)
  checkpointer.close()
  assert step == 4
  np.testing.assert_array_equal(np.asarray(next(resumed)['x']), [8, 9])


def test_bad_size_is_refused():
  with pytest.raises(ValueError, match='size=0'):
    prefetch.DevicePrefetch(_source(), functools.partial(sharding.global_batch, mesh=None), size=0)
