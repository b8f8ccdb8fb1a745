"""FSDP (`config.train.param_sharding='fsdp'`) on 8 simulated CPU devices: really sharded, and the
same loss trajectory as replicated parameters."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests import train_helpers as th

# Runs in a subprocess: the device count is fixed when jax starts.
_DRIVER = r"""
import json, sys
import jax
import numpy as np
from jaxcxr.data import loader
from jaxcxr.training import loop
from tests import train_helpers as th

out = {'devices': jax.device_count()}
for mode in ('replicated', 'fsdp'):
  config, _ = th.tiny_config(sys.argv[1], **{'train.param_sharding': mode, 'train.batch_size': 16,
                                             'optim.learning_rate': 0.01})
  run = loop.make_run(config, sys.argv[2] + '/' + mode)
  state = loop.fresh_state(run, jax.random.key(0))
  batches = loader.train_iterator(config.data, run.handle, local_batch_size=16, seed=0)
  losses = []
  for _ in range(5):
    state, metrics = run.train_step(state, loop.sharding.global_batch(next(batches), run.mesh),
                                    jax.random.key(1))
    losses.append(float(metrics['loss']))
  params = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
      {'params': state.params, 'opt_state': state.opt_state})}
  out[mode] = {'losses': losses, 'params': {
      k: {'shape': list(v.shape), 'shard': list(v.addressable_shards[0].data.shape),
          'replicated': v.sharding.is_fully_replicated, 'spec': str(v.sharding.spec)}
      for k, v in params.items() if hasattr(v, 'sharding')}}
print('RESULT ' + json.dumps(out))
"""


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  from jaxcxr import data  # pylint: disable=g-import-not-at-top

  d = tmp_path_factory.mktemp('tfds')
  data.prepare(th.tiny_config(d)[0].data)
  return d


@pytest.mark.slow  # two 8-device compiles (about a minute of CPU)
def test_fsdp_shards_large_arrays_and_follows_the_replicated_losses(data_dir, tmp_path):
  """Same 5 steps (global batch 16 over 8 devices), replicated vs FSDP parameters.

  FSDP changes only where the arrays live and the order of the reductions (XLA all-gathers the
  parameters and reduce-scatters the gradients), so the losses agree to float32 round-off:
  rtol 1e-5.
  """
  proc = subprocess.run(
    [sys.executable, '-c', _DRIVER, str(data_dir), str(tmp_path)],
    cwd=th.REPO,
    env=th.env(8),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split('RESULT ', 1)[1])
  assert result['devices'] == 8
  rep, fsdp = result['replicated'], result['fsdp']
  np.testing.assert_allclose(fsdp['losses'], rep['losses'], rtol=1e-5)
  assert len(set(rep['losses'])) == 5  # the state moves

  assert all(p['replicated'] for p in rep['params'].values())
  # cnn_bn: conv3 (3, 3, 32, 64) and conv4 (3, 3, 64, 128) kernels exceed the 2**14-element
  # threshold; their Adam moments are sharded like them. Each device holds 1/8 of them.
  large = {k: p for k, p in fsdp['params'].items() if np.prod(p['shape']) >= 2**14}
  assert len(large) == 6, sorted(large)  # 2 kernels x (param, Adam mu, Adam nu)
  for k, p in large.items():
    assert not p['replicated'], k
    assert np.prod(p['shard']) * 8 == np.prod(p['shape']), (k, p)
  small = [p for k, p in fsdp['params'].items() if k not in large]
  assert small and all(p['replicated'] for p in small)
