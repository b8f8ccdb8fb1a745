"""Parity with torchvision: random weights with randomised BatchNorm statistics, eval mode, same
input; logits and the Grad-CAM feature map must agree to 1e-4 in float32.

Each model is converted and jit-compiled once per module (module-scoped fixtures). The full-size
members (vgg19, resnet101, densenet201) are marked slow; they still run in CI.

The JAX side runs under `jax.default_matmul_precision('highest')` (full float32 convs and matmuls):
GPUs default to TF32, a 10-bit mantissa, which alone breaks 1e-4; the torch reference runs on the
CPU in float32. So the tolerance means the same on every backend.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxcxr import models
from jaxcxr.models import weights
from tests.models.torch_reference import randomized_torchvision, torch_forward

ATOL = 1e-4


@functools.cache
def _apply_fn(name: str, **overrides):
  model = models.build(name, 1000, **overrides)
  return jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))


def jax_forward(name, variables, x, **overrides):
  with jax.default_matmul_precision('highest'):  # compiled (and cached) at this precision
    logits, state = _apply_fn(name, **overrides)(variables, x)
  return np.asarray(logits), np.asarray(state['intermediates']['cam_features'][0])


class Converted:
  """A torchvision model, its conversion, and both forwards on a batch-2 random input."""

  def __init__(self, name: str, size: int = 224):
    self.name = name
    self.torch_model = randomized_torchvision(name)
    self.variables = weights.from_torchvision(
      name, {k: v.numpy() for k, v in self.torch_model.state_dict().items()}
    )
    self.x = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    self.torch_logits, self.torch_fmap = torch_forward(name, self.torch_model, self.x)
    self.logits, self.fmap = jax_forward(name, self.variables, self.x)


def _check(c: Converted):
  logit_diff = float(np.abs(c.logits - c.torch_logits).max())
  fmap_diff = float(np.abs(c.fmap - c.torch_fmap).max())
  fmap_scale = float(np.abs(c.torch_fmap).max())
  print(
    f'\n{c.name} @ {c.x.shape[1]}px: max |logits diff| {logit_diff:.2e} '
    f'(|logits| <= {np.abs(c.torch_logits).max():.1f}), max |cam diff| {fmap_diff:.2e} '
    f'(|cam| <= {fmap_scale:.1f})'
  )
  assert c.logits.shape == c.torch_logits.shape == (2, 1000)
  assert c.fmap.shape == c.torch_fmap.shape
  assert logit_diff <= ATOL
  # The map is un-normalised (ResNet's layer4 reaches ~100 here): 1e-4 relative to its scale.
  assert fmap_diff <= ATOL * max(1.0, fmap_scale)
  # Non-trivial outputs: the classes are really separated, the map is not all zeros.
  assert np.abs(c.torch_logits).std() > 0.1 and np.abs(c.torch_fmap).max() > 0.1


@pytest.fixture(scope='module')
def densenet121():
  return Converted('densenet121')


@pytest.fixture(scope='module')
def vgg11_bn():
  return Converted('vgg11_bn')


@pytest.fixture(scope='module')
def resnet18():
  return Converted('resnet18')


def test_resnet18_parity(resnet18):
  _check(resnet18)


def test_vgg11_bn_parity(vgg11_bn):
  _check(vgg11_bn)


def test_densenet121_parity(densenet121):
  _check(densenet121)


def test_densenet121_scanned_blocks_parity(densenet121):
  """The scanned blocks (`scan_chunk`) on the same converted weights match torchvision too."""
  c = Converted.__new__(Converted)
  c.name, c.x = densenet121.name, densenet121.x
  c.torch_logits, c.torch_fmap = densenet121.torch_logits, densenet121.torch_fmap
  c.logits, c.fmap = jax_forward(c.name, densenet121.variables, c.x, scan_chunk=8)
  _check(c)


def test_float64_parity(resnet18, vgg11_bn):
  """In float64 the only difference left is rounding: the architectures are exact."""
  for c, size in ((resnet18, 224), (vgg11_bn, 100)):
    x = c.x[:1, :size, :size].astype(np.float64)
    with torch.no_grad():
      ref = c.torch_model.double()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    c.torch_model.float()
    with jax.enable_x64(True):
      model = models.build(c.name, 1000, dtype=jnp.float64)
      variables = jax.tree.map(lambda a: np.asarray(a, np.float64), c.variables)
      logits = np.asarray(jax.jit(model.apply)(variables, x))
    assert logits.dtype == np.float64
    print(f'\n{c.name} float64 @ {size}px: max |logits diff| {np.abs(logits - ref).max():.1e}')
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-10)


# 128 px: 4x4 before AdaptiveAvgPool2d((7, 7)), overlapping bins; 100 px: 3x3, uneven bins.
@pytest.mark.parametrize('size', [128, 100])
def test_vgg_adaptive_pool_parity_off_224(vgg11_bn, size):
  x = np.random.RandomState(size).randn(2, size, size, 3).astype(np.float32)
  c = Converted.__new__(Converted)
  c.name, c.torch_model, c.variables, c.x = 'vgg11_bn', vgg11_bn.torch_model, vgg11_bn.variables, x
  c.torch_logits, c.torch_fmap = torch_forward(c.name, c.torch_model, x)
  c.logits, c.fmap = jax_forward(c.name, c.variables, x)
  _check(c)


def test_densenet_memory_efficient_identical():
  """Same outputs and gradients with and without remat, and the rematerialisation is there.

  (A reduced DenseNet: remat only changes the backward pass, and compiling the gradient of a
  full DenseNet-121 twice would cost minutes on CPU.)
  """
  x = jnp.asarray(np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32))
  small = dict(growth_rate=4, block_config=(2, 2), num_init_features=8)
  plain = models.build('densenet121', 3, **small)
  remat = models.build('densenet121', 3, memory_efficient=True, **small)
  variables = jax.jit(plain.init)(jax.random.key(1), x)

  def loss(model, params):
    return model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])[
      0
    ].sum()

  def outputs(model, params):
    return model.apply({**variables, 'params': params}, x), jax.grad(loss, 1)(model, params)

  def grad_jaxpr(m):
    return str(jax.make_jaxpr(jax.grad(loss, 1), static_argnums=0)(m, variables['params']))

  assert 'remat' in grad_jaxpr(remat) and 'remat' not in grad_jaxpr(plain)
  (y_plain, g_plain), (y_remat, g_remat) = jax.jit(
    lambda p: (outputs(plain, p), outputs(remat, p))
  )(variables['params'])
  np.testing.assert_array_equal(y_plain, y_remat)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vgg19', 'resnet101', 'densenet201'])
def test_full_size_parity(name):
  _check(Converted(name))
