"""Smoke tests of the benchmark code paths (jaxcxr.tools.benchmark, launch.benchmark) on a tiny model.

No timing assertions: the numbers depend on the machine and its load. What is checked is that the
real train step runs under the benchmark (the SGD step changes the parameters, the step counter
advances, donated state is not reused), the reported quantities exist and are consistent, and the
table / derived ratios are computed from them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.tools import benchmark
from jaxcxr import models


def test_random_variables_shapes_and_bn_defaults():
  module = models.build('cnn_bn', 3)
  v = benchmark.random_variables(module, 16)
  shapes = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, 16, 16, 3)), train=False),
                          jax.random.key(0))
  assert jax.tree.map(lambda a: a.shape, v['params']) == jax.tree.map(lambda a: a.shape,
                                                                      shapes['params'])
  np.testing.assert_array_equal(v['batch_stats']['bn1']['var'], np.ones(16, np.float32))
  np.testing.assert_array_equal(v['batch_stats']['bn1']['mean'], np.zeros(16, np.float32))
  np.testing.assert_array_equal(v['params']['bn1']['scale'], np.ones(16, np.float32))
  assert float(jnp.std(v['params']['conv2']['kernel'])) == pytest.approx(
      np.sqrt(2.0 / (9 * 16)), rel=0.1)


def test_compiled_train_step_updates_state_and_reports_cost():
  module = models.build('cnn_bn', 3)
  state = benchmark.make_state(module, 16)
  batch = benchmark.random_batch(4, 16)
  before = np.asarray(state.params['conv1']['kernel'])
  compiled, timings = benchmark.compile_train_step(module, state, batch, jax.random.key(0))
  assert timings['train_flops'] > 0 and timings['compile_s'] >= 0
  assert timings['train_temp_mb'] >= 0
  new_state, metrics = compiled(state, batch, jax.random.key(0))
  assert int(new_state.step) == 1
  assert bool(metrics['finite'])
  assert not np.allclose(np.asarray(new_state.params['conv1']['kernel']), before)


def test_bench_arch_all_parts_and_achieved():
  r = benchmark.bench_arch('cnn_small', 16, 2, 1)
  for key in ('train_img_s', 'eval_img_s', 'gradcam_img_s', 'train_flops', 'eval_flops',
              'peak_rss_mb', 'compile_s', 'trace_lower_s'):
    assert r[key] > 0, key
  # A train step (forward + backward) costs more FLOPs than the forward alone.
  assert r['train_flops'] > r['eval_flops']
  a = benchmark.achieved(r, machine_flops=1e12)
  assert a['train_gflop_s'] == pytest.approx(r['train_flops'] / r['train_step_s'] / 1e9)
  assert a['train_frac_peak'] == pytest.approx(a['train_gflop_s'] / 1e3)


def test_compile_only_part_skips_timing():
  r = benchmark.bench_arch('cnn_small', 16, 2, 1, parts=('compile',))
  assert 'compile_s' in r and 'train_img_s' not in r and 'eval_img_s' not in r


def test_matmul_flops_positive():
  assert benchmark.matmul_flops(n=64, steps=2) > 0


def test_table_and_ratios():
  from launch import benchmark as cli  # pylint: disable=g-import-not-at-top
  row = cli._derive({'arch': 'x', 'batch': 4, 'train_img_s': 6.0, 'torch_train_img_s': 3.0,
                     'eval_img_s': 10.0, 'torch_eval_img_s': 20.0, 'train_step_s': 4 / 6.0,
                     'train_flops': 2e9, 'trace_lower_s': 1.0, 'compile_s': 2.0},
                    machine_flops=10e9)
  assert row['train_ratio'] == pytest.approx(2.0)
  assert row['eval_ratio'] == pytest.approx(0.5)
  assert row['cold_total_s'] == pytest.approx(3.0)
  assert row['train_pct_peak'] == pytest.approx(100 * 3e9 / 10e9)
  table = cli.format_table([row])
  assert table.count('\n') == 2 and '| x |' in table and '2.00' in table


def test_tap_matmul_weight_grad_equals_xla():
  from jaxcxr.tools import benchmark_convs  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  g = jax.random.normal(jax.random.key(2), (2, 6, 6, 4))
  ref = jax.vjp(benchmark_convs._conv, x, w)[1](g)[1]
  np.testing.assert_allclose(benchmark_convs.tap_matmul_weight_grad(x, g, 3), ref, rtol=1e-5,
                             atol=1e-5)
  rows = benchmark_convs.probe(shapes=((1, 4, 2, 2, 1),), steps=1)
  assert rows[0]['dw_tap_rel_diff'] < 1e-5 and rows[0]['fwd_ms'] > 0

