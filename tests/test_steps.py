"""The jitted train step on a tiny model: compute dtype, frozen backbone."""

import functools

import jax
import numpy as np
import pytest

from jaxcxr.training import config_checks, steps
from jaxcxr.training import state as state_lib
from tests import train_helpers as th


def _batch(n=16, size=32, seed=0):
  """A learnable batch: the label shifts the brightness."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, (n,)).astype(np.int32)
  images = rng.integers(0, 120, (n, size, size, 1)) + 60 * labels[:, None, None, None]
  return {'image': images.astype(np.uint8), 'label': labels}


def _run(config, state, num_steps, batch=None):
  """(state, losses) after `num_steps` jitted train steps on one batch."""
  step = jax.jit(
    functools.partial(
      steps.train_step,
      dtype=state_lib.compute_dtype(config),
      label_smoothing=0.0,
      class_weights=None,
    )
  )
  batch, out = batch or _batch(), []
  for _ in range(num_steps):
    state, metrics = step(state, batch, jax.random.key(1))
    out.append(float(metrics['loss']))
  return state, np.array(out)


@pytest.mark.parametrize(
  ('backend', 'want'), [('cpu', 'float32'), ('gpu', 'bfloat16'), ('tpu', 'bfloat16')]
)
def test_auto_dtype_is_bf16_on_accelerators_only(monkeypatch, backend, want):
  config, _ = th.tiny_config('/tmp/unused', **{'model.dtype': 'auto'})
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert state_lib.compute_dtype(config) == np.dtype(want)
  module, _ = state_lib.build_model(config)
  assert module.dtype == np.dtype(want)


def test_auto_is_the_default_and_explicit_dtypes_win():
  config, _ = th.tiny_config('/tmp/unused')
  assert config.model.dtype == 'auto'
  config_checks.validate_config(config, num_devices=1, num_processes=1)
  for name in ('float32', 'bfloat16'):
    config, _ = th.tiny_config('/tmp/unused', **{'model.dtype': name})
    assert state_lib.compute_dtype(config) == np.dtype(name)


def test_bf16_train_steps_follow_the_float32_trajectory():
  """12 AdamW steps of cnn_bn in bfloat16 compute vs float32, same init and batch.

  bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation); params, optimizer state
  and the loss reduction stay float32, so the losses agree to a few per mille while the loss falls
  by two orders of magnitude. Tolerance: 3% relative per step (measured: under 1%).
  """
  f32_config, _ = th.tiny_config('/tmp/unused', **{'model.dtype': 'float32'})
  bf16_config, _ = th.tiny_config('/tmp/unused', **{'model.dtype': 'bfloat16'})
  _, state = th.init_state(f32_config)  # params are float32 in both: one init serves both runs
  bf16_module, _ = state_lib.build_model(bf16_config)
  _, f32 = _run(f32_config, state, 12)
  _, bf16 = _run(bf16_config, state.replace(apply_fn=bf16_module.apply), 12)
  assert f32[-1] < 0.1 * f32[0]  # it learns
  assert not np.array_equal(f32, bf16)  # the bf16 run really computed in bf16
  np.testing.assert_allclose(bf16, f32, rtol=0.03)


def _flat(tree) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  }


def test_frozen_backbone_keeps_params_and_batch_norm_statistics_bitwise():
  """backbone_lr_mult=0: backbone params AND BatchNorm running statistics stay bitwise; BatchNorm
  normalises with the running statistics (the train-mode loss is the eval-mode loss); the head
  learns."""
  config, _ = th.tiny_config(
    '/tmp/unused',
    **{'optim.backbone_lr_mult': 0.0, 'model.dropout': 0.0, 'optim.learning_rate': 0.05},
  )
  head = state_lib.head_names(config.model.name)
  _, state = th.init_state(config)
  before = _flat({'params': state.params, 'batch_stats': state.batch_stats})
  batch = _batch()
  logits = steps.eval_step(state, batch, dtype=np.float32)
  eval_loss = float(np.mean(-jax.nn.log_softmax(logits)[np.arange(16), batch['label']]))

  step = jax.jit(
    functools.partial(
      steps.train_step,
      dtype=np.float32,
      label_smoothing=0.0,
      class_weights=None,
      frozen_backbone_head=head,
    )
  )
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  after = _flat({'params': state.params, 'batch_stats': state.batch_stats})

  np.testing.assert_allclose(losses[0], eval_loss, rtol=1e-5)  # BatchNorm in inference mode
  assert any(k.startswith("['batch_stats']") for k in before)
  for k in before:
    if any(k.startswith(f"['params']['{h}']") for h in head):
      assert not np.array_equal(after[k], before[k]), k  # the head moved
    else:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  assert losses[-1] < 0.9 * losses[0], losses  # and learned
