"""DenseNet blocks as `lax.scan` over chunks of layers (`scan_chunk`) compute the unrolled blocks.

A reduced DenseNet (growth 4, blocks of 3 and 2 layers, chunks of 2: an uneven last chunk), so the
gradients compile in seconds. In float64 the scanned and unrolled paths must agree to rounding:
logits, gradients of every parameter and the BatchNorm running statistics. Full-size torchvision
parity of the scanned path is in test_parity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models
from jaxcxr.models import layers

SMALL = dict(growth_rate=4, block_config=(3, 2), num_init_features=8)


def _build(dtype=jnp.float32, **kw):
  return models.build('densenet121', 3, dtype=dtype, **SMALL, **kw)


def _x(dtype=np.float32):
  return np.random.RandomState(0).randn(4, 16, 16, 3).astype(dtype)


def test_same_variables_and_init():
  x = _x()
  plain = jax.jit(_build().init)(jax.random.key(3), x)
  scanned = jax.jit(_build(scan_chunk=2).init)(jax.random.key(3), x)
  assert jax.tree.structure(plain) == jax.tree.structure(scanned)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(scanned), strict=True):
    np.testing.assert_array_equal(a, b)


def test_float64_outputs_gradients_and_statistics_match_unrolled():
  with jax.enable_x64(True):
    x = jnp.asarray(_x(np.float64))
    plain = _build(jnp.float64)
    scanned = _build(jnp.float64, memory_efficient=True, scan_chunk=2)  # remat inside the body
    variables = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64),
      jax.jit(plain.init)(jax.random.key(1), x.astype(jnp.float32)),  # jitted: eager init took 4 s
    )
    # Non-trivial running statistics, so eval mode shows they are read per channel.
    stats = jax.tree.map(
      lambda a: a + 0.1 * jnp.arange(a.size, dtype=a.dtype) / a.size, variables['batch_stats']
    )

    def run(model):
      def loss(params):
        logits, upd = model.apply(
          {'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
        )
        return jnp.sum(logits * jnp.arange(3.0)), upd

      (_, upd), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
      evaluated = model.apply({'params': variables['params'], 'batch_stats': stats}, x)
      return evaluated, grads, upd['batch_stats']

    want, got = jax.jit(lambda: (run(plain), run(scanned)))()
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True
    ):
      assert a.dtype == b.dtype == jnp.float64
      np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=jax.tree_util.keystr(path))
    # The running statistics moved (train mode updated them) and keep the unrolled shapes.
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, got[2])
    assert all(jax.tree.leaves(moved))


def test_one_scan_per_chunk_and_the_input_gradient_as_a_forward_conv():
  x = _x()
  model = _build(scan_chunk=2)
  variables = jax.jit(model.init)(jax.random.key(0), x)

  def loss(params):
    return model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])[
      0
    ].sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables['params']))
  # Blocks of 3 and 2 layers in chunks of 2: 2 + 1 scans forward (and as many transposed).
  assert jaxpr.count('scan[') >= 3
  assert 'optimization_barrier' in jaxpr  # layers.input_grad_by_forward_conv in the body
  unrolled = str(
    jax.make_jaxpr(
      jax.grad(
        lambda p: (
          _build()
          .apply({**variables, 'params': p}, x, train=True, mutable=['batch_stats'])[0]
          .sum()
        )
      )
    )(variables['params'])
  )
  assert 'scan[' not in unrolled and 'optimization_barrier' not in unrolled


@pytest.mark.parametrize(('kernel', 'padding'), [(1, 0), (3, 0), (3, 1)])
def test_input_grad_by_forward_conv_is_the_input_gradient(kernel, padding):
  rng = np.random.RandomState(kernel + padding)
  x = jnp.asarray(rng.randn(2, 7, 7, 5).astype(np.float32))
  w = jnp.asarray(rng.randn(kernel, kernel, 5, 6).astype(np.float32))
  y, vjp = jax.vjp(lambda x: layers._conv2d(x, w, 1, padding), x)  # pylint: disable=protected-access
  g = jnp.asarray(rng.randn(*y.shape).astype(np.float32))
  np.testing.assert_allclose(
    layers.input_grad_by_forward_conv(g, w, padding), vjp(g)[0], rtol=1e-5, atol=1e-5
  )


def test_dropout_training_runs_unrolled():
  x = _x()
  model = _build(scan_chunk=2, dropout_rate=0.2)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  jaxpr = str(
    jax.make_jaxpr(
      lambda v: model.apply(
        v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)}
      )
    )(variables)
  )
  assert 'scan[' not in jaxpr
  assert 'scan[' in str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))
