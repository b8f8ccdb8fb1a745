"""Parity with torchvision: random weights with randomised BatchNorm statistics, eval mode, same
input; logits and the Grad-CAM feature map must agree to 1e-4 in float32.

Each model is converted and jit-compiled once per module (module-scoped fixtures). The full-size
members (vgg19, resnet101, densenet201) are marked slow; they still run in CI.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxcxr import models
from jaxcxr import weights

ATOL = 1e-4


def randomized_torchvision(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
  """torchvision model with random weights, BN affine params and BN running statistics.

  The running statistics are first calibrated on a random 224 px batch (as training would), then
  randomised per channel (mean shifted by N(0, 0.05) std, var scaled by U(0.9, 1.1)): purely random
  statistics blow ResNet-101's activations up to ~1e7 (and U(0.7, 1.3) still to ~1e2), where a
  1e-4 absolute tolerance only measures float32 rounding of huge numbers. Each ResNet residual
  branch's last BN gets gamma ~ U(0.1, 0.5), as in trained ResNets: with U(0.5, 1.5) the random
  ResNet-101 amplifies float32 rounding so much that torch float32 itself is 5e-4 off its own
  float64 result (`test_float64_parity` shows the conversion itself is exact).
  Linear layers get He-normal weights instead of N(0, 0.01), which would leave the VGG logits ~0.03.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(**kwargs)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  branch_ends = {id(m.bn2) for m in model.modules()
                 if isinstance(m, torchvision.models.resnet.BasicBlock)}
  branch_ends |= {id(m.bn3) for m in model.modules()
                  if isinstance(m, torchvision.models.resnet.Bottleneck)}
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, (2.0 / m.in_features)**0.5)
        m.bias.normal_(0.0, 0.1)
    for m in bns:
      m.weight.uniform_(*((0.1, 0.5) if id(m) in branch_ends else (0.5, 1.5)))
      m.bias.normal_(0.0, 0.1)
      m.momentum = None  # cumulative average: the stats of the calibration batch
    if bns:
      model.train()(torch.randn(2, 3, 224, 224))
    for m in bns:
      m.running_mean.add_(torch.randn_like(m.running_mean) * 0.05 * m.running_var.sqrt())
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
      m.momentum = 0.1
  return model.eval()


def _cam_module(name: str, model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
  """The torch module whose output is the Grad-CAM map, and whether a ReLU follows (DenseNet)."""
  if name.startswith('vgg'):
    relus = [m for m in model.features if isinstance(m, torch.nn.ReLU)]
    return relus[-1], False  # the last conv ReLU, right before the final max-pool
  if name.startswith('resnet'):
    return model.layer4, False
  return model.features, True  # relu(norm5(...)) is applied in DenseNet.forward


def torch_forward(name: str, model: torch.nn.Module, x_nhwc: np.ndarray):
  """(logits, Grad-CAM map as NHWC) from torch, via a forward hook."""
  captured = {}
  module, relu = _cam_module(name, model)
  handle = module.register_forward_hook(lambda m, i, o: captured.update(fmap=o))
  with torch.no_grad():
    logits = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
  handle.remove()
  fmap = captured['fmap'].clone()
  if relu:
    fmap = torch.relu(fmap)
  return logits.numpy(), fmap.numpy().transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def _apply_fn(name: str, **overrides):
  model = models.build(name, 1000, **overrides)
  return jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))


def jax_forward(name, variables, x, **overrides):
  logits, state = _apply_fn(name, **overrides)(variables, x)
  return np.asarray(logits), np.asarray(state['intermediates']['cam_features'][0])


class Converted:
  """A torchvision model, its conversion, and both forwards on a batch-2 random input."""

  def __init__(self, name: str, size: int = 224):
    self.name = name
    self.torch_model = randomized_torchvision(name)
    self.variables = weights.from_torchvision(
        name, {k: v.numpy() for k, v in self.torch_model.state_dict().items()})
    self.x = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    self.torch_logits, self.torch_fmap = torch_forward(name, self.torch_model, self.x)
    self.logits, self.fmap = jax_forward(name, self.variables, self.x)


def _check(c: Converted):
  logit_diff = float(np.abs(c.logits - c.torch_logits).max())
  fmap_diff = float(np.abs(c.fmap - c.torch_fmap).max())
  fmap_scale = float(np.abs(c.torch_fmap).max())
  print(f'\n{c.name} @ {c.x.shape[1]}px: max |logits diff| {logit_diff:.2e} '
        f'(|logits| <= {np.abs(c.torch_logits).max():.1f}), max |cam diff| {fmap_diff:.2e} '
        f'(|cam| <= {fmap_scale:.1f})')
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


@pytest.mark.parametrize('size', [224, 100])
def test_float64_parity(resnet18, vgg11_bn, size):
  """In float64 the only difference left is rounding: the architectures are exact."""
  for c in (resnet18, vgg11_bn):
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


def test_vgg11_bn_parity(vgg11_bn):
  _check(vgg11_bn)


def test_densenet121_parity(densenet121):
  _check(densenet121)


# 128 px: 4x4 before AdaptiveAvgPool2d((7, 7)), overlapping bins; 100 px: 3x3, uneven bins.
@pytest.mark.parametrize('size', [128, 100])
def test_vgg_adaptive_pool_parity_off_224(vgg11_bn, size):
  x = np.random.RandomState(size).randn(2, size, size, 3).astype(np.float32)
  c = Converted.__new__(Converted)
  c.name, c.torch_model, c.variables, c.x = 'vgg11_bn', vgg11_bn.torch_model, vgg11_bn.variables, x
  c.torch_logits, c.torch_fmap = torch_forward(c.name, c.torch_model, x)
  c.logits, c.fmap = jax_forward(c.name, c.variables, x)
  _check(c)


def test_densenet_memory_efficient_identical(densenet121):
  logits, fmap = jax_forward('densenet121', densenet121.variables, densenet121.x,
                             memory_efficient=True)
  np.testing.assert_array_equal(logits, densenet121.logits)
  np.testing.assert_array_equal(fmap, densenet121.fmap)


def test_densenet_memory_efficient_gradients_identical():
  """Same gradients with and without remat, and the rematerialisation is really there."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  small = dict(growth_rate=8, block_config=(2, 3), num_init_features=16)
  plain = models.build('densenet121', 3, **small)
  remat = models.build('densenet121', 3, memory_efficient=True, **small)
  variables = jax.jit(plain.init)(jax.random.key(1), x)

  def grad(model, params):
    loss = lambda p: model.apply({**variables, 'params': p}, x, train=True,
                                 mutable=['batch_stats'])[0].sum()
    return jax.grad(loss)(params)

  assert 'remat' in str(jax.make_jaxpr(functools.partial(grad, remat))(variables['params']))
  assert 'remat' not in str(jax.make_jaxpr(functools.partial(grad, plain))(variables['params']))
  g_plain, g_remat = jax.jit(lambda p: (grad(plain, p), grad(remat, p)))(variables['params'])
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vgg19', 'resnet101', 'densenet201'])
def test_full_size_parity(name):
  _check(Converted(name))
