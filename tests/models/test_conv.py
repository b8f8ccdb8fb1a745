"""layers.conv: nn.Conv's parameters and forward, weight gradient as an im2col matmul."""

import functools

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


@pytest.mark.parametrize(
  ('hw', 'kernel', 'stride', 'padding'),
  [
    ((2, 2), 3, 1, 1),  # ResNet's last stage at 64 px, DenseNet's last block
    ((1, 1), 3, 1, 1),  # the same at 32 px
    ((2, 3), 3, 1, 1),  # one side smaller than the kernel
    ((4, 4), 3, 2, 1),  # a strided conv whose output (2x2) is: its input gradient
    ((2, 2), 7, 2, 3),  # a stem on a tiny map
    ((5, 5), 7, 2, 3),
  ],
)
def test_maps_smaller_than_the_kernel_match_xla_in_outputs_and_gradients(
  hw, kernel, stride, padding
):
  """On maps `smaller_than_kernel` the CPU forward / input gradient are matmuls (XLA:CPU's own
  conv is 20-30x slower there); they compute XLA's sums in another order."""
  x = jax.random.normal(jax.random.key(0), (3, *hw, 6))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 6, 5))

  def loss(conv, x, w):
    return jnp.sum(jnp.sin(conv(x, w, stride, padding)))

  ours = jax.jit(lambda x, w: layers.conv2d(x, w, stride, padding))(x, w)
  ref = layers._conv2d(x, w, stride, padding)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  g_ours = jax.jit(jax.grad(functools.partial(loss, layers.conv2d), argnums=(0, 1)))(x, w)
  g_ref = jax.grad(functools.partial(loss, layers._conv2d), argnums=(0, 1))(x, w)
  for a, b in zip(g_ours, g_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  ('platform', 'hw', 'dots', 'convs'),
  [
    ('cpu', (2, 2), 3, 0),  # forward, input and weight gradients: matmuls
    ('cpu', (3, 3), 1, 2),  # not smaller than the 3x3 kernel: XLA's forward and input gradient
    ('cuda', (2, 2), 0, 3),
    ('tpu', (2, 2), 0, 3),
  ],
)
def test_matmul_convs_only_on_cpu_and_only_on_small_maps(platform, hw, dots, convs):
  x = jnp.ones((2, *hw, 4))

  def loss(x, w):
    return jnp.sum(layers.conv2d(x, w, 1, 1) ** 2)

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, jnp.ones((3, 3, 4, 5)))
  text = lowered.lower(lowering_platforms=(platform,)).as_text()
  assert (text.count('stablehlo.dot_general'), text.count('stablehlo.convolution')) == (dots, convs)
