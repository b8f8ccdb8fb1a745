"""Every torchvision-family variant: parameter and BatchNorm-statistic counts equal torchvision's,
logit/Grad-CAM shapes, `build` errors and options. Uses `jax.eval_shape` (no real init)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxcxr import models

TORCHVISION_NAMES = [n for n in models.NAMES if models.family(n) != 'small_cnn']
_RNGS = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _abstract_variables(name, size=224, batch=2, **overrides):
  model = models.build(name, overrides.pop('num_classes', 1000), **overrides)
  return jax.eval_shape(model.init, _RNGS, jnp.zeros((batch, size, size, 3)))


# (name, Grad-CAM map (H, W, C) at 224 px), from torchvision's architectures.
CAM_SHAPES = {
  **{n: (14, 14, 512) for n in TORCHVISION_NAMES if n.startswith('vgg')},
  'resnet18': (7, 7, 512),
  'resnet34': (7, 7, 512),
  'resnet50': (7, 7, 2048),
  'resnet101': (7, 7, 2048),
  'resnet152': (7, 7, 2048),
  'densenet121': (7, 7, 1024),
  'densenet161': (7, 7, 2208),
  'densenet169': (7, 7, 1664),
  'densenet201': (7, 7, 1920),
}

# Published torchvision parameter counts (docs "num_params"), a check independent of torch.
PUBLISHED = {
  'vgg11': 132863336,
  'vgg13': 133047848,
  'vgg16': 138357544,
  'vgg19': 143667240,
  'vgg11_bn': 132868840,
  'vgg13_bn': 133053736,
  'vgg16_bn': 138365992,
  'vgg19_bn': 143678248,
  'resnet18': 11689512,
  'resnet34': 21797672,
  'resnet50': 25557032,
  'resnet101': 44549160,
  'resnet152': 60192808,
  'densenet121': 7978856,
  'densenet161': 28681000,
  'densenet169': 14149480,
  'densenet201': 20013928,
}


@pytest.mark.parametrize('name', TORCHVISION_NAMES)
def test_counts_match_torchvision(name):
  with torch.device('meta'):  # architecture only, no memory or init time
    tv = getattr(torchvision.models, name)()
  tv_params = sum(p.numel() for p in tv.parameters())
  tv_stats = sum(
    b.numel() for k, b in tv.named_buffers() if k.endswith(('running_mean', 'running_var'))
  )
  variables = _abstract_variables(name)
  assert _count(variables['params']) == tv_params == PUBLISHED[name]
  assert _count(variables.get('batch_stats', {})) == tv_stats
  assert variables['perturbations']['cam_features'].shape == (2, *CAM_SHAPES[name])


@pytest.mark.parametrize('name', ['vgg16_bn', 'resnet50', 'densenet121'])
def test_num_classes_head(name):
  variables = _abstract_variables(name, num_classes=3)
  head = variables['params'][models.HEAD_PARAMS[name]]
  assert head['kernel'].shape[-1] == 3 and head['bias'].shape == (3,)
  assert models.HEAD_PARAMS[models.family(name)] == models.HEAD_PARAMS[name]


@pytest.mark.parametrize(
  ('name', 'size', 'cam_hw'),
  [('vgg11', 64, 4), ('vgg11', 100, 6), ('resnet18', 128, 4), ('densenet121', 96, 3)],
)
def test_logits_shape_at_other_sizes(name, size, cam_hw):
  model = models.build(name, 3)
  variables = _abstract_variables(name, size=size, batch=1, num_classes=3)
  logits = jax.eval_shape(model.apply, variables, jnp.zeros((1, size, size, 3)))
  assert logits.shape == (1, 3)
  assert variables['perturbations']['cam_features'].shape[1:3] == (cam_hw, cam_hw)


def test_unknown_name_lists_names():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet7'.*densenet201"):
    models.build('resnet7', 3)
  with pytest.raises(ValueError, match='num_classes'):
    models.build('resnet18', 0)
  with pytest.raises(
    ValueError,
    match=r"resnet18 has no option\(s\) \['dropout_rate'\]; its "
    r"options: \['block', 'dtype', 'stage_sizes'\]",
  ):
    models.build('resnet18', 3, dropout_rate=0.1)


def test_vgg_custom_cfg_marks_last_relu():
  """A cfg without the final pool (used by small smoke tests): the map is the last ReLU's output,
  i.e. relu of the last conv (features_3; features_4 is its ReLU), and the ReLU before the pool
  ends block 1."""
  model = models.build('vgg11', 3, cfg=(8, 'M', 16), classifier_width=8)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = model.init(_RNGS, x)
  assert {k: v.shape for k, v in variables['perturbations'].items()} == {
    'cam_features': (2, 16, 16, 16),
    'cam_stage_block1': (2, 32, 32, 8),
  }
  _, state = model.apply(
    variables,
    x,
    mutable=['intermediates'],
    capture_intermediates=lambda m, _: m.name in ('features_0', 'features_3'),
  )
  marked = np.asarray(state['intermediates']['cam_features'][0])
  last_conv = np.asarray(state['intermediates']['features_3']['__call__'][0])
  assert last_conv.shape == marked.shape
  assert 0.2 < (last_conv < 0).mean() < 0.8  # the ReLU has something to cut
  np.testing.assert_array_equal(marked, np.maximum(last_conv, 0))
  first_conv = np.asarray(state['intermediates']['features_0']['__call__'][0])
  block1 = np.asarray(state['intermediates']['cam_stage_block1'][0])
  np.testing.assert_array_equal(block1, np.maximum(first_conv, 0))


@pytest.mark.parametrize('name', ['vgg11_bn', 'resnet18', 'densenet121'])
def test_bfloat16_compute_float32_params(name):
  model = models.build(name, 3, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(model.init, _RNGS, x)
  params_and_stats = {k: variables[k] for k in ('params', 'batch_stats')}
  assert {a.dtype for a in jax.tree.leaves(params_and_stats)} == {jnp.dtype(jnp.float32)}
  logits, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, x
  )
  assert logits.dtype == jnp.bfloat16
  assert state['intermediates']['cam_features'][0].dtype == jnp.bfloat16
