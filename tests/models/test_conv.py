"""layers.conv: nn.Conv's parameters and forward, weight gradient as an im2col matmul."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.models import layers


@pytest.mark.parametrize(
  ('kernel', 'stride', 'padding', 'use_bias'),
  [
    (1, 1, 0, False),  # ResNet / DenseNet bottleneck 1x1
    (1, 2, 0, False),  # ResNet downsample
    (3, 1, 1, True),  # VGG / small CNN 3x3 (with bias)
    (3, 2, 1, False),  # ResNet strided 3x3
    (7, 2, 3, False),  # stems
  ],
)
def test_conv_matches_nn_conv_in_params_outputs_and_gradients(kernel, stride, padding, use_bias):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 5))
  ours = layers.conv(4, kernel, jnp.float32, 'c', stride, padding, use_bias)
  ref = nn.Conv(
    4,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((padding, padding),) * 2,
    use_bias=use_bias,
  )
  params = ours.init(jax.random.key(1), x)
  ref_params = ref.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)  # same names, init, values
  np.testing.assert_array_equal(ours.apply(params, x), ref.apply(params, x))

  def loss(module, p, x):
    return jnp.sum(jnp.sin(module.apply(p, x)))

  g_ours = jax.grad(loss, argnums=(1, 2))(ours, params, x)
  g_ref = jax.grad(loss, argnums=(1, 2))(ref, params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), g_ours, g_ref)


def test_weight_grad_in_bf16_keeps_the_kernel_dtype():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4), jnp.bfloat16)
  dw = jax.grad(lambda w: jnp.sum(layers.conv2d(x, w, 1, 1).astype(jnp.float32)))(w)
  ref = jax.grad(lambda w: jnp.sum(layers._conv2d(x, w, 1, 1).astype(jnp.float32)))(w)
  assert dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(dw.astype(np.float32), ref.astype(np.float32), rtol=3e-2, atol=0.2)


def _grad_fn():
  x = jnp.ones((2, 8, 8, 4))
  return jax.jit(jax.grad(lambda w: jnp.sum(layers.conv2d(x, w, 1, 1) ** 2)))


@pytest.mark.parametrize(
  ('platform', 'dots', 'convs'), [('cpu', 1, 1), ('cuda', 0, 2), ('tpu', 0, 2)]
)
def test_im2col_weight_grad_only_on_cpu(platform, dots, convs):
  """GPU / TPU keep XLA's weight-gradient convolution; only the CPU lowering has the matmul."""
  text = _grad_fn().trace(jnp.ones((3, 3, 4, 5))).lower(lowering_platforms=(platform,)).as_text()
  assert (text.count('stablehlo.dot_general'), text.count('stablehlo.convolution')) == (dots, convs)
