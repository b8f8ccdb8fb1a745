"""Schedules and optimizer construction against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from jaxcxr.training import optim


def _cfg(**kw):
  c = base.get_base_config().optim
  c.update(kw)
  return c


@pytest.mark.parametrize(
  ('kw', 'checks'),
  [
    (dict(schedule='constant', warmup_epochs=0.0, learning_rate=0.1), {0: 0.1, 99: 0.1}),
    # warmup 1 epoch = 10 steps: linear from 0
    (dict(schedule='constant', warmup_epochs=1.0, learning_rate=0.1), {0: 0.0, 5: 0.05, 10: 0.1}),
    # cosine over 100 steps to alpha=0: half way is lr/2
    (
      dict(schedule='cosine', warmup_epochs=0.0, learning_rate=0.2, min_lr_ratio=0.0),
      {0: 0.2, 50: 0.1, 100: 0.0},
    ),
    # step decay at epochs 3 and 6 (10 steps/epoch)
    (
      dict(
        schedule='step', warmup_epochs=0.0, learning_rate=1.0, step_epochs=(3, 6), step_gamma=0.1
      ),
      {29: 1.0, 30: 0.1, 59: 0.1, 60: 0.01},
    ),
  ],
)
def test_schedules(kw, checks):
  sched = optim.make_schedule(_cfg(**kw), steps_per_epoch=10, total_steps=100)
  for step, want in checks.items():
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-7)


def _params():
  return {
    'backbone_conv': {'kernel': jnp.ones((3, 3, 1, 2)), 'bias': jnp.ones((2,))},
    'classifier': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones((3,))},
  }


def _one_update(cfg, grads_value=1.0):
  tx, _ = optim.make_optimizer(cfg, 10, 100, ('classifier',))
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_frozen_backbone_gets_zero_updates():
  u = _one_update(
    _cfg(
      name='sgd',
      schedule='constant',
      warmup_epochs=0.0,
      learning_rate=0.1,
      backbone_lr_mult=0.0,
      weight_decay=0.0,
      grad_clip_norm=0.0,
      momentum=0.0,
    )
  )
  assert float(jnp.abs(u['backbone_conv']['kernel']).max()) == 0.0
  np.testing.assert_allclose(u['classifier']['kernel'], -0.1)


def test_backbone_multiplier_scales_sgd_step():
  u = _one_update(
    _cfg(
      name='sgd',
      schedule='constant',
      warmup_epochs=0.0,
      learning_rate=0.1,
      backbone_lr_mult=0.1,
      weight_decay=0.0,
      grad_clip_norm=0.0,
      momentum=0.0,
    )
  )
  np.testing.assert_allclose(u['backbone_conv']['kernel'], -0.01, rtol=1e-6)
  np.testing.assert_allclose(u['classifier']['bias'], -0.1, rtol=1e-6)


def test_weight_decay_skips_biases():
  # Zero gradients: the only update is decay, on kernels only (lr * wd * p).
  u = _one_update(
    _cfg(
      name='sgd',
      schedule='constant',
      warmup_epochs=0.0,
      learning_rate=0.1,
      weight_decay=0.5,
      grad_clip_norm=0.0,
      momentum=0.0,
    ),
    grads_value=0.0,
  )
  np.testing.assert_allclose(u['classifier']['kernel'], -0.05, rtol=1e-6)
  np.testing.assert_allclose(u['classifier']['bias'], 0.0)


def test_clipping_bounds_the_global_norm():
  u = _one_update(
    _cfg(
      name='sgd',
      schedule='constant',
      warmup_epochs=0.0,
      learning_rate=1.0,
      weight_decay=0.0,
      grad_clip_norm=1.0,
      momentum=0.0,
    ),
    grads_value=10.0,
  )
  np.testing.assert_allclose(float(optax.tree.norm(u)), 1.0, rtol=1e-5)


def test_unknown_names():
  with pytest.raises(ValueError, match='schedule'):
    optim.make_schedule(_cfg(schedule='linear'), 10, 100)
  with pytest.raises(ValueError, match=r'optim\.name'):
    optim.make_optimizer(_cfg(name='lamb'), 10, 100, ('classifier',))
