"""Small CNNs: shapes, parameter counts, Grad-CAM hooks, train/eval behaviour, bf16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models

_RNGS = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}


# Hand-computed: conv k*k*cin*cout + cout bias (cnn_small) or + 2*cout BN scale/bias (cnn_bn);
# head 128*3 + 3.
@pytest.mark.parametrize(
  ('name', 'num_params', 'num_stats'),
  [
    ('cnn_small', (27 * 16 + 16) + (144 * 32 + 32) + (288 * 64 + 64) + (576 * 128 + 128) + 387, 0),
    (
      'cnn_bn',
      27 * 16 + 144 * 32 + 288 * 64 + 576 * 128 + 2 * (16 + 32 + 64 + 128) + 387,
      2 * (16 + 32 + 64 + 128),
    ),
  ],
)
@pytest.mark.parametrize('size', [64, 224])
def test_shapes_and_counts(name, num_params, num_stats, size):
  model = models.build(name, 3)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(model.init, _RNGS, x)

  def count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))

  assert count(variables['params']) == num_params
  assert count(variables.get('batch_stats', {})) == num_stats
  assert variables['params'][models.HEAD_PARAMS[name]]['kernel'].shape == (128, 3)
  # Three 2x2 pools: size / 8.
  assert variables['perturbations']['cam_features'].shape == (2, size // 8, size // 8, 128)


@pytest.mark.parametrize('name', ['cnn_small', 'cnn_bn'])
def test_cam_features_and_eval_is_deterministic(name):
  model = models.build(name, 3)
  x = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  variables = jax.jit(model.init)(_RNGS, x)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
  fmap = state['intermediates']['cam_features'][0]
  assert logits.shape == (2, 3) and fmap.shape == (2, 8, 8, 128)
  # Logits are the head applied to the pooled map: the map is really the last conv activation.
  head = variables['params'][models.HEAD_PARAMS[name]]
  np.testing.assert_allclose(logits, fmap.mean((1, 2)) @ head['kernel'] + head['bias'], atol=1e-5)
  np.testing.assert_array_equal(logits, jax.jit(model.apply)(variables, x))


def test_train_mode_uses_dropout_and_batch_stats():
  model = models.build('cnn_bn', 3, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  variables = jax.jit(model.init)(_RNGS, x)
  apply = jax.jit(
    lambda key: model.apply(
      variables, x, train=True, rngs={'dropout': key}, mutable=['batch_stats']
    )
  )
  (a, state), (b, _) = apply(jax.random.key(5)), apply(jax.random.key(6))
  assert not np.allclose(a, b)  # different dropout masks
  # momentum 0.9 from mean 0: the new running mean is 0.1 * batch mean, not 0.
  assert float(jnp.abs(state['batch_stats']['bn1']['mean']).max()) > 1e-3


def test_bfloat16_compute_float32_params():
  model = models.build('cnn_bn', 3, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.jit(model.init)(_RNGS, x)
  assert {a.dtype for a in jax.tree.leaves(variables['params'])} == {jnp.dtype(jnp.float32)}
  assert jax.jit(model.apply)(variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize(('name', 'width'), [('cnn_res18', 64), ('cnn_res18_half', 32)])
def test_grey_resnet_is_resnet18_reading_channel_0(name, width):
  """cnn_res18 = torchvision's ResNet-18 layout whose stem sees only channel 0 (the grey image)."""
  grey = models.build(name, 3)
  x = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  v = jax.jit(grey.init)(_RNGS, x)
  params, stats = v['params'], v['batch_stats']
  assert params['conv1']['kernel'].shape == (7, 7, 1, width)
  assert params['classifier']['kernel'].shape == (8 * width, 3)
  assert v['perturbations']['cam_features'].shape == (2, 2, 2, 8 * width)
  if width == 64:  # same parameters as resnet18 but the stem: 7*7*(3-1)*64 fewer
    ref = models.build('resnet18', 3)
    ref_params = jax.eval_shape(ref.init, _RNGS, x)['params']

    def count(tree):
      return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))

    assert count(ref_params) - count(params) == 49 * 2 * 64
    # The same network: resnet18 with zero weights on channels 1, 2 of its stem.
    k = params['conv1']['kernel']
    ref_vars = {
      'params': {
        **{n: p for n, p in params.items() if n != 'classifier'},
        'conv1': {'kernel': jnp.concatenate([k, 0 * k, 0 * k], axis=2)},
        'fc': params['classifier'],
      },
      'batch_stats': stats,
    }
    np.testing.assert_allclose(
      jax.jit(ref.apply)(ref_vars, x),
      jax.jit(grey.apply)({'params': params, 'batch_stats': stats}, x),
      atol=1e-4,
      rtol=1e-4,
    )
