"""layers.max_pool: torch's MaxPool2d; on CPU its gradient is computed by taps, equal to XLA's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.models import layers


def _xla_max_pool(x, window, stride, padding):
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding),) * 2)


CASES = [(2, 2, 0),   # VGG / small CNN
         (3, 2, 1)]   # ResNet / DenseNet stems (overlapping windows, -inf padding)


@pytest.mark.parametrize('window, stride, padding', CASES)
@pytest.mark.parametrize('side', [8, 9])   # an odd side drops the last row/column (2x2)
def test_outputs_and_gradients_equal_xla(window, stride, padding, side):
  x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
  np.testing.assert_array_equal(layers.max_pool(x, window, stride, padding),
                                _xla_max_pool(x, window, stride, padding))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x, window, stride, padding)))
  np.testing.assert_array_equal(jax.grad(loss(layers.max_pool))(x),
                                jax.grad(loss(_xla_max_pool))(x))


@pytest.mark.parametrize('window, stride, padding', CASES)
def test_ties_send_the_gradient_to_the_first_maximum(window, stride, padding):
  """ReLU outputs are full of equal zeros: each window's gradient goes to one cell, the first in
  row-major order (torch and XLA agree), never split or duplicated."""
  x = jnp.zeros((1, 5, 5, 1))
  g = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, stride, padding)))(x)
  np.testing.assert_array_equal(
      g, jax.grad(lambda x: jnp.sum(_xla_max_pool(x, window, stride, padding)))(x))
  out = layers.max_pool(x, window, stride, padding)
  assert float(g.sum()) == out.size


def test_cpu_step_has_no_select_and_scatter():
  x = jnp.ones((2, 8, 8, 3))
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(layers.max_pool(x, 3, 2, 1)))).lower(x).as_text()
  assert 'select_and_scatter' not in hlo and 'select-and-scatter' not in hlo
