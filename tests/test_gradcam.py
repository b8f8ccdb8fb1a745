"""Tests for jaxcxr.evaluation.gradcam on hand-built Linen models obeying the 'cam_features'
contract."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models
from jaxcxr.evaluation import gradcam


class Tiny(nn.Module):
  """conv -> relu = A (marked) -> global average pool -> dense: dy_c/dA_ijk = W[k, c] / (h w)."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    a = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), name='conv')(x))
    a = self.perturb('cam_features', a)
    self.sow('intermediates', 'cam_features', a)
    return nn.Dense(self.num_classes, name='head')(a.mean(axis=(1, 2)))


class Head(nn.Module):
  """The input *is* the feature map: lets a test choose A exactly."""

  @nn.compact
  def __call__(self, a, train=False):
    a = self.perturb('cam_features', a)
    self.sow('intermediates', 'cam_features', a)
    return nn.Dense(2, use_bias=False, name='head')(a.mean(axis=(1, 2)))


def _init(module, x, seed=0):
  return module.init({'params': jax.random.key(seed), 'dropout': jax.random.key(seed)}, x)


def numpy_variables(module, shape, seed=0):
  """He-normal kernels, zero biases, unit BatchNorm statistics, drawn with numpy.

  Same structure as `module.init` (found with `jax.eval_shape`, nothing compiled) but without the
  per-shape compilation of JAX's random initialisers, which dominates small CPU tests.
  """
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda x: _init(module, x), jax.ShapeDtypeStruct(shape, jnp.float32))

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    value = 1.0 if name in ('scale', 'var') else 0.0
    return jnp.full(leaf.shape, value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(
    fill, {k: v for k, v in abstract.items() if k in ('params', 'batch_stats')}
  )


@pytest.fixture(scope='module')
def tiny():
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  module = Tiny()
  return module, numpy_variables(module, x.shape, seed=1), x


def test_weights_equal_explicit_split_model_gradient(tiny):
  module, variables, x = tiny
  target = jnp.array([0, 2, 1])
  out = gradcam.grad_cam(module, variables, x, target)
  # Explicitly split model: A from the conv, then differentiate the head alone.
  p = variables['params']
  a = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2)).apply({'params': p['conv']}, x))

  def head_score(a):
    logits = a.mean(axis=(1, 2)) @ p['head']['kernel'] + p['head']['bias']
    return jnp.take_along_axis(logits, target[:, None], 1).sum()

  grads = jax.grad(head_score)(a)
  np.testing.assert_allclose(out['weights'], grads.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
  # For this GAP head dy_c/dA_ijk = W[k, c] / (h w) at every cell, hence the weights.
  hw = a.shape[1] * a.shape[2]
  np.testing.assert_allclose(out['weights'], p['head']['kernel'][:, target].T / hw, rtol=1e-5)
  raw = jax.nn.relu(jnp.einsum('bhwk,bk->bhw', a, grads.mean(axis=(1, 2))))
  np.testing.assert_allclose(out['raw'], raw, rtol=1e-5, atol=1e-7)
  assert out['cam'].shape == (3, 16, 16)
  np.testing.assert_allclose(out['cam'].max(axis=(1, 2)), 1.0, atol=1e-6)
  np.testing.assert_allclose(out['cam'].min(axis=(1, 2)), 0.0, atol=1e-6)


def test_weights_match_finite_differences(tiny):
  module, variables, x = tiny
  out = gradcam.grad_cam(module, variables, x[:1], 1)
  _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=['intermediates']))(variables, x[:1])
  fmap = state['intermediates']['cam_features'][0]
  eps = 1e-2
  logit = jax.jit(
    lambda d: module.apply({**variables, 'perturbations': {'cam_features': d}}, x[:1])[0, 1]
  )
  for i, j, k in [(0, 0, 0), (3, 5, 2), (7, 7, 3)]:
    delta = jnp.zeros_like(fmap).at[0, i, j, k].set(eps)
    fd = (logit(delta) - logit(-delta)) / (2 * eps)
    # Weight = mean of dy/dA over the map; for GAP every cell's derivative equals it.
    assert out['weights'][0, k] == pytest.approx(float(fd), rel=1e-2, abs=1e-6)


def test_target_selection(tiny):
  module, variables, x = tiny
  logits = jax.jit(module.apply)(variables, x)
  predicted = gradcam.grad_cam(module, variables, x)
  np.testing.assert_array_equal(predicted['target'], np.argmax(logits, axis=1))
  np.testing.assert_allclose(predicted['logits'], logits, rtol=1e-5)
  fixed = gradcam.grad_cam(module, variables, x, 2)
  np.testing.assert_array_equal(fixed['target'], [2, 2, 2])
  mixed = gradcam.grad_cam(module, variables, x, jnp.array([1, -1, 0]))
  assert mixed['target'].tolist() == [1, int(np.argmax(logits[1])), 0]
  kernel = variables['params']['head']['kernel']
  hw = 8 * 8
  np.testing.assert_allclose(mixed['weights'][0], kernel[:, 1] / hw, rtol=1e-5)
  np.testing.assert_allclose(mixed['weights'][2], kernel[:, 0] / hw, rtol=1e-5)
  with pytest.raises(ValueError, match='gradcam'):
    gradcam.grad_cam(module, variables, x, method='cam')


def test_gradcam_plus_plus_known_answer():
  # A: channel 0 all ones (sum 4), channel 1 = [[2, 0], [0, 0]] (sum 2); class-0 head
  # weights (4, 8) over 2x2 cells -> g = (1, 2) everywhere.
  # Grad-CAM:   a = (1, 2)                  -> map 1 + 2 A1 = [[5, 1], [1, 1]]
  # Grad-CAM++: alpha_0 = 1 / (2 + 4 * 1) = 1/6, alpha_1 = 4 / (8 + 2 * 8) = 1/6,
  #             a = 4 cells * alpha * g = (2/3, 4/3) -> map [[10/3, 2/3], [2/3, 2/3]]
  a = np.zeros((1, 2, 2, 2), np.float32)
  a[..., 0] = 1.0
  a[0, 0, 0, 1] = 2.0
  module = Head()
  variables = {'params': {'head': {'kernel': jnp.array([[4.0, 0.0], [8.0, 0.0]])}}}
  plain = gradcam.grad_cam(module, variables, a, 0)
  plus = gradcam.grad_cam(module, variables, a, 0, method='gradcam++')
  np.testing.assert_allclose(plain['weights'], [[1.0, 2.0]], rtol=1e-6)
  np.testing.assert_allclose(plain['raw'], [[[5.0, 1.0], [1.0, 1.0]]], rtol=1e-6)
  np.testing.assert_allclose(plus['weights'], [[2 / 3, 4 / 3]], rtol=1e-6)
  np.testing.assert_allclose(plus['raw'], [[[10 / 3, 2 / 3], [2 / 3, 2 / 3]]], rtol=1e-6)
  # Negative gradients get no Grad-CAM++ weight: class 1 has zero head weights -> zero map.
  zero = gradcam.grad_cam(module, variables, a, 1, method='gradcam++')
  np.testing.assert_array_equal(zero['weights'], 0.0)
  np.testing.assert_array_equal(zero['cam'], 0.0)


def test_pointing_game_planted_masks():
  cams = np.zeros((4, 6, 6))
  masks = np.zeros((4, 6, 6), bool)
  cams[0, 1, 1] = 1.0
  masks[0, 0:3, 0:3] = True  # hit
  cams[1, 5, 5] = 1.0
  masks[1, 0:3, 0:3] = True  # miss
  cams[2, 2, 4] = 0.9
  masks[2, 2, 4] = True  # hit (single pixel)
  cams[3, 0, 0] = 1.0  # empty mask: ignored
  assert gradcam.pointing_game(cams, masks) == pytest.approx(2 / 3)
  assert np.isnan(gradcam.pointing_game(cams[3:], masks[3:]))


def test_rank_correlation():
  rng = np.random.default_rng(0)
  a = rng.random((3, 8, 8))
  assert gradcam.rank_correlation(a, a) == pytest.approx(1.0)
  assert gradcam.rank_correlation(a, 1 - a) == pytest.approx(-1.0)
  assert gradcam.rank_correlation(a, a**3) == pytest.approx(1.0)  # monotone: ranks unchanged
  b = a.copy()
  b[1] = 0.0  # constant map: skipped
  assert gradcam.rank_correlation(a[:2], b[:2]) == pytest.approx(1.0)


def test_randomisation_check_decorrelates():
  # A "trained" Tiny: channel 0 detects bright pixels, and only it feeds class 0.
  x = np.full((4, 16, 16, 3), -1.0, np.float32)
  for i, (r, c) in enumerate([(2, 2), (10, 4), (4, 12), (12, 12)]):
    x[i, r : r + 3, c : c + 3] = 2.0
  module = Tiny()
  kernel = np.zeros((3, 3, 3, 4), np.float32)
  kernel[1, 1, :, 0] = 1.0
  head = np.zeros((4, 3), np.float32)
  head[0, 0] = 1.0
  params = {
    'conv': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(4)},
    'head': {'kernel': jnp.asarray(head), 'bias': jnp.zeros(3)},
  }
  trained = {'params': params}
  out = gradcam.grad_cam(module, trained, x, 0)
  peak = out['cam'].reshape(4, -1).argmax(1)
  masks = x[..., 0] > 0
  assert gradcam.pointing_game(out['cam'], masks) == 1.0, peak
  rhos = [
    gradcam.randomisation_check(module, trained, x, jax.random.key(s), target=0)
    for s in range(1, 6)
  ]
  assert np.nanmean(rhos) < 0.5, rhos
  # And the trained model compared with itself is perfectly correlated.
  same = gradcam.rank_correlation(out['cam'], gradcam.grad_cam(module, trained, x, 0)['cam'])
  assert same == pytest.approx(1.0)


def test_overlay_blends_jet():
  gray = np.full((4, 6), 100, np.uint8)
  cam = np.zeros((4, 6), np.float32)
  cam[0, 0] = 1.0
  out = gradcam.overlay(gray, cam, alpha=0.5)
  assert out.shape == (4, 6, 3) and out.dtype == np.uint8
  # jet(1.0) = (0.5, 0, 0); jet(0.0) = (0, 0, 0.5); base 100/255.
  np.testing.assert_allclose(
    out[0, 0], np.round(255 * (0.5 * 100 / 255 + 0.5 * np.array([0.5, 0.0, 0.0]))), atol=1
  )
  np.testing.assert_allclose(
    out[1, 1], np.round(255 * (0.5 * 100 / 255 + 0.5 * np.array([0.0, 0.0, 0.5]))), atol=1
  )
  assert (
    gradcam.overlay(gray, np.zeros((2, 3)), 0.0).tolist()
    == np.repeat(gray[..., None], 3, -1).tolist()
  )


def test_save_overlay_grid(tmp_path):
  rng = np.random.default_rng(0)
  grays = rng.integers(0, 255, (6, 16, 16), dtype=np.uint8)
  cams = rng.random((6, 16, 16))
  labels = [0, 0, 1, 1, 2, 2]
  preds = [0, 1, 1, 1, 0, 0]
  chosen = gradcam.save_overlay_grid(
    str(tmp_path / 'grid.png'),
    grays,
    cams,
    labels,
    preds,
    ('COVID', 'Normal', 'Viral Pneumonia'),
    per_class=2,
  )
  assert chosen == {
    'COVID': {'correct': [0], 'wrong': [1]},
    'Normal': {'correct': [2, 3], 'wrong': []},
    'Viral Pneumonia': {'correct': [], 'wrong': [4, 5]},
  }
  assert (tmp_path / 'grid.png').stat().st_size > 5000


def test_cnn_small_contract():
  module = models.build('cnn_small', 3)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = numpy_variables(module, x.shape)
  # 'auto': the last stage is 4x4 at 32 px, so the map is conv3's (8x8, 64 channels).
  out = gradcam.grad_cam(module, variables, x)
  assert out['cam'].shape == (2, 32, 32) and out['raw'].shape == (2, 8, 8)
  assert out['weights'].shape == (2, 64)
  last = gradcam.grad_cam(module, variables, x, layer='last')
  assert last['raw'].shape == (2, 4, 4) and last['weights'].shape == (2, 128)
  np.testing.assert_allclose(last['logits'], out['logits'], rtol=1e-6)
  np.testing.assert_allclose(
    out['logits'], jax.jit(module.apply)(variables, x), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(out['cam'].max(axis=(1, 2)), 1.0, atol=1e-6)


# (name, the 'cam_features' map of a (2, 64, 64, 3) batch): ResNet / DenseNet at stride 32, VGG
# before its last max-pool (stride 16).
FAMILIES = [
  ('resnet18', (2, 2, 2, 512)),
  ('densenet121', (2, 2, 2, 1024)),
  ('vgg11', (2, 4, 4, 512)),
  ('vgg11_bn', (2, 4, 4, 512)),
]


@pytest.mark.parametrize(('name', 'fmap_shape'), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_gradcam_traces_for_each_family(name, fmap_shape):
  """Abstract evaluation (jax.eval_shape: traced, not compiled or run) of init and Grad-CAM++."""
  assert name in models.NAMES  # a model that disappears fails here, it is not skipped
  module = models.build(name, 3)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: _init(module, x), x)
  marks = {k: v.shape for k, v in variables['perturbations'].items()}
  assert marks['cam_features'] == fmap_shape
  out = jax.eval_shape(
    lambda v, x: gradcam.grad_cam(module, v, x, method='gradcam++'), variables, x
  )
  assert out['cam'].shape == (2, 64, 64)
  assert out['logits'].shape == (2, 3)
  # The map explained is one the model marks (which one is grad_cam's layer choice): the raw map
  # and its channel weights have that map's shape.
  (explained,) = [s for s in marks.values() if s[:3] == out['raw'].shape]
  assert out['weights'].shape == (2, explained[3])


def test_gradcam_runs_on_batchnorm_model():
  module = models.build('cnn_bn', 3, widths=(4, 8))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = numpy_variables(module, x.shape)
  assert 'batch_stats' in variables
  out = gradcam.grad_cam(module, variables, x, method='gradcam++')
  assert out['cam'].shape == (2, 32, 32) and out['raw'].shape == (2, 16, 16)
  np.testing.assert_allclose(
    out['logits'], jax.jit(module.apply)(variables, x), rtol=1e-5, atol=1e-6
  )
  assert np.isfinite(np.asarray(out['cam'])).all()


def test_layer_choice_names_and_combinations():
  module = models.build('cnn_res18_half', 3)
  shape = (1, 112, 112, 3)
  assert gradcam.resolve_layers(module, shape) == ('cam_stage_layer3',)
  assert gradcam.resolve_layers(module, shape, 'last') == ('cam_features',)
  assert gradcam.resolve_layers(module, shape, 'layer2+last') == (
    'cam_stage_layer2',
    'cam_features',
  )
  assert gradcam.describe_layers(module, shape) == 'layer3 7x7 at 112 px'
  assert gradcam.describe_layers(module, shape, 'auto+last') == 'layer3 7x7 + last 4x4 at 112 px'
  assert gradcam.map_side(module, shape, 'last') == 4 and gradcam.map_side(module, shape) == 7
  assert gradcam.resolve_layers(module, (1, 224, 224, 3)) == ('cam_features',)  # 7x7 already
  with pytest.raises(ValueError, match=r"'layer9' is not marked.*auto, last, layer1, layer2"):
    gradcam.resolve_layers(module, shape, 'layer9')
  # A model marking only 'cam_features' (the hand-built ones above) uses it whatever its size.
  assert gradcam.resolve_layers(Tiny(), (1, 16, 16, 3)) == ('cam_features',)


def test_combined_layers_average_the_normalised_maps():
  module = models.build('cnn_bn', 3, widths=(4, 8))  # conv1 32x32, last (conv2) 16x16 at 32 px
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = numpy_variables(module, x.shape, seed=3)
  fine = gradcam.grad_cam(module, variables, x, 0, layer='conv1')
  coarse = gradcam.grad_cam(module, variables, x, 0, layer='last')
  both = gradcam.grad_cam(module, variables, x, 0, layer='conv1+last')
  norm = gradcam._normalise  # pylint: disable=protected-access
  up = jax.image.resize(coarse['raw'], (2, 32, 32), method='bilinear')
  np.testing.assert_allclose(both['raw'], (norm(fine['raw']) + norm(up)) / 2, rtol=1e-5, atol=1e-6)
  assert both['weights'].shape == (2, 4 + 8)  # both layers' channel weights
