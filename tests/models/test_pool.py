"""layers.max_pool: torch's MaxPool2d; on CPU, tiled windows' gradient is computed by taps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.models import layers


def _xla_max_pool(x, window, stride, padding):
  return nn.max_pool(
    x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2
  )


def _loss(pool, window, stride, padding):
  return lambda x: jnp.sum(jnp.sin(pool(x, window, stride, padding)))


@pytest.mark.parametrize('side', [8, 9])  # an odd side drops the last row/column
def test_tiled_pool_outputs_and_gradients_equal_xla_bitwise(side):
  x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
  np.testing.assert_array_equal(layers.max_pool(x, 2, 2), _xla_max_pool(x, 2, 2, 0))
  np.testing.assert_array_equal(
    jax.grad(_loss(layers.max_pool, 2, 2, 0))(x), jax.grad(_loss(_xla_max_pool, 2, 2, 0))(x)
  )


@pytest.mark.parametrize(('window', 'stride', 'padding'), [(2, 2, 0), (3, 2, 1)])
def test_grad_by_taps_equals_xla_also_for_overlapping_windows(window, stride, padding):
  """The general function is right for the stems' 3x3 / stride 2 / pad 1 pool too (up to the
  summation order of a cell's shares); `max_pool` leaves that case to XLA (see its docstring)."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  y, vjp = jax.vjp(lambda x: _xla_max_pool(x, window, stride, padding), x)
  g = jax.random.normal(jax.random.key(1), y.shape)
  np.testing.assert_allclose(
    layers.max_pool_grad_by_taps(x, g, window, stride, padding), vjp(g)[0], rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize(('window', 'stride', 'padding'), [(2, 2, 0), (3, 2, 1)])
def test_ties_send_the_gradient_to_the_first_maximum(window, stride, padding):
  """ReLU outputs are full of equal zeros: each window's gradient goes to one cell, the first in
  row-major order (torch and XLA agree), never split or duplicated."""
  x = jnp.zeros((1, 5, 5, 1))
  y, vjp = jax.vjp(lambda x: _xla_max_pool(x, window, stride, padding), x)
  g = jnp.ones_like(y)
  ours = layers.max_pool_grad_by_taps(x, g, window, stride, padding)
  np.testing.assert_array_equal(ours, vjp(g)[0])
  assert float(ours.sum()) == y.size


def test_cpu_gradient_of_a_tiled_pool_has_no_select_and_scatter():
  x = jnp.ones((2, 8, 8, 3))
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(layers.max_pool(x, 2, 2)))).lower(x).as_text()
  assert 'select_and_scatter' not in hlo
