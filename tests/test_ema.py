"""Weight EMA (config.train.ema_decay): the average is updated each step and is what eval uses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcxr import models
from jaxcxr.data import preprocess
from jaxcxr.training import checkpoint, steps
from jaxcxr.training import state as state_lib
from tests import train_helpers


def _state(ema: bool):
  module = models.build('cnn_bn', 3, widths=(4, 8))
  v = module.init(
    {'params': jax.random.key(0), 'dropout': jax.random.key(0)},
    jnp.zeros((1, 16, 16, 3)),
    train=False,
  )
  return state_lib.TrainState.create(
    apply_fn=module.apply,
    params=v['params'],
    tx=optax.sgd(0.5),
    batch_stats=v['batch_stats'],
    lr_scale=jnp.ones(()),
    ema_params=v['params'] if ema else None,
  )


def test_ema_update_and_eval_use_it():
  batch = {
    'image': jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 16, 16, 1)), jnp.uint8),
    'label': jnp.asarray([0, 1, 2, 0]),
  }
  step = jax.jit(
    functools.partial(
      steps.train_step, dtype=jnp.float32, label_smoothing=0.0, class_weights=None, ema_decay=0.99
    )
  )
  s0 = _state(ema=True)
  s1, _ = step(s0, batch, jax.random.key(1))
  s2, _ = step(s1, batch, jax.random.key(1))
  # Warm-up decay min(0.99, (1 + t) / (10 + t)): 0.1 at step 0, 2/11 at step 1.
  for d, before, after in ((0.1, s0, s1), (2 / 11, s1, s2)):
    jax.tree.map(
      lambda e, e0, p, d=d: np.testing.assert_allclose(
        e, d * e0 + (1 - d) * p, rtol=1e-5, atol=1e-6
      ),
      after.ema_params,
      before.ema_params,
      after.params,
    )
  assert not np.allclose(s2.ema_params['conv1']['kernel'], s2.params['conv1']['kernel'])
  # eval_step evaluates the EMA weights (with the live BatchNorm statistics).
  logits = steps.eval_step(s2, batch, dtype=jnp.float32)
  want = s2.apply_fn(
    {'params': s2.ema_params, 'batch_stats': s2.batch_stats},
    preprocess.to_model_input(batch['image']),
    train=False,
  )
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  # Without EMA nothing changes: no average is kept, eval uses the params.
  plain, _ = jax.jit(
    functools.partial(steps.train_step, dtype=jnp.float32, label_smoothing=0.0, class_weights=None)
  )(_state(ema=False), batch, jax.random.key(1))
  assert plain.ema_params is None


@pytest.mark.slow
def test_ema_run_checkpoints_and_infers_with_the_average(tmp_path):
  r = train_helpers.run_train(
    {'data.data_dir': tmp_path / 'tfds', 'train.ema_decay': 0.9, **train_helpers.LEAN_REPORT},
    tmp_path / 'w',
  )
  assert r.returncode == 0, r.stderr[-2000:]
  tree = train_helpers.final_params(tmp_path / 'w')
  assert any(k.startswith('params/') for k in tree)
  bundle = checkpoint.restore_for_inference(str(tmp_path / 'w'), which='latest')
  raw = checkpoint.read_state_numpy(
    str(
      max(
        (tmp_path / 'w' / 'checkpoints').iterdir(),
        key=lambda p: int(p.name) if p.name.isdigit() else -1,
      )
    )
  )
  np.testing.assert_array_equal(
    bundle.variables['params']['conv1']['kernel'], raw['ema_params']['conv1']['kernel']
  )
  assert not np.array_equal(raw['ema_params']['conv1']['kernel'], raw['params']['conv1']['kernel'])
