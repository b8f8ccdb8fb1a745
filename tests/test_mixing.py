"""Mixup / CutMix (config.train.mixup_alpha, cutmix_alpha): what is mixed, and the step's loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcxr import models
from jaxcxr.training import mixing, steps
from jaxcxr.training import state as state_lib


def _images(n=6, size=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 1)), jnp.float32)


def test_off_is_the_identity():
  x = _images()
  y, lam = mixing.mix(jax.random.key(0), x, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert y is x and lam is None
  assert mixing.blend(x, None) is x


def test_mixup_blends_each_example_with_its_mirror():
  x = _images()
  for seed in range(5):
    y, lam = mixing.mix(jax.random.key(seed), x, mixup_alpha=0.4, cutmix_alpha=0.0)
    assert 0.0 < float(lam) < 1.0
    np.testing.assert_allclose(y, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)


def test_cutmix_pastes_one_box_and_lam_is_the_kept_area():
  x = _images(size=16)
  lams = []
  for seed in range(20):
    y, lam = mixing.mix(jax.random.key(seed), x, mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = np.asarray(y != x)[0, :, :, 0]  # example 0 vs its mirror (example 5) differ everywhere
    assert np.array_equal(np.asarray(y)[:, pasted], np.asarray(x[::-1])[:, pasted])
    assert np.array_equal(np.asarray(y)[:, ~pasted], np.asarray(x)[:, ~pasted])
    np.testing.assert_allclose(float(lam), 1.0 - pasted.mean(), rtol=1e-6)
    if pasted.any():  # one axis-aligned rectangle
      rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
      assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
      assert pasted.sum() == len(rows) * len(cols)
    lams.append(float(lam))
  assert 0.3 < np.mean(lams) < 0.7  # Beta(1, 1): area ratio uniform, mean 1/2 before clipping


def test_both_alphas_use_each_kind_about_half_the_batches():
  x = _images(size=16)
  kinds = []
  for seed in range(40):
    y, lam = mixing.mix(jax.random.key(seed), x, mixup_alpha=1.0, cutmix_alpha=1.0)
    blended = np.allclose(y, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    kinds.append(blended)
  assert 10 <= sum(kinds) <= 30


@functools.cache  # a TrainState is immutable: one init serves every step below
def _state():
  module = models.build('cnn_bn', 3, widths=(4, 8))
  v = module.init(
    {'params': jax.random.key(0), 'dropout': jax.random.key(0)},
    jnp.zeros((1, 16, 16, 3)),
    train=False,
  )
  return state_lib.TrainState.create(
    apply_fn=module.apply,
    params=v['params'],
    tx=optax.sgd(0.1),
    batch_stats=v['batch_stats'],
    lr_scale=jnp.ones(()),
  )


@functools.cache  # one compiled step per setting: the unmixed ones serve all three cases below
def _step(mixup_alpha: float, cutmix_alpha: float, weights: tuple[float, ...] | None):
  return jax.jit(
    functools.partial(
      steps.train_step,
      dtype=jnp.float32,
      label_smoothing=0.1,
      class_weights=None if weights is None else jnp.asarray(weights),
      mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha,
    )
  )


@pytest.mark.parametrize('alphas', [(0.4, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_train_step_mixes_images_and_targets(alphas):
  rng = np.random.default_rng(0)
  half = rng.integers(0, 255, (3, 16, 16, 1))
  mirror = {
    'image': jnp.asarray(np.concatenate([half, half[::-1]]), jnp.uint8),
    'label': jnp.asarray([0, 1, 2, 2, 1, 0]),
  }
  other = {
    'image': jnp.asarray(rng.integers(0, 255, (6, 16, 16, 1)), jnp.uint8),
    'label': jnp.asarray([0, 1, 2, 0, 1, 2]),
  }

  def loss(batch, mixup_alpha, cutmix_alpha, weights=None):
    step = _step(mixup_alpha, cutmix_alpha, weights)
    return float(step(_state(), batch, jax.random.key(3))[1]['loss'])

  # A batch equal to its mirror is left as it is (images and targets alike): same loss as unmixed.
  np.testing.assert_allclose(loss(mirror, *alphas), loss(mirror, 0.0, 0.0), rtol=1e-5)
  weights = (1.0, 2.0, 3.0)
  np.testing.assert_allclose(
    loss(mirror, *alphas, weights), loss(mirror, 0.0, 0.0, weights), rtol=1e-5
  )
  # Any other batch is mixed.
  assert abs(loss(other, *alphas) - loss(other, 0.0, 0.0)) > 1e-3
