"""`config.model.cpu_ynn_fusion`: XLA:CPU compiler options of the steps, given only where they
apply, and in effect in the jitted train and eval steps of a run."""

import jax
import jax.numpy as jnp
import pytest

from jaxcxr import data
from jaxcxr.training import cpu_options, loop
from tests import train_helpers as th


def test_options_only_when_asked_on_cpu_with_a_tested_jaxlib():
  assert cpu_options.compiler_options(True, 'cpu', '0.12.0.1') == cpu_options.YNN_FUSION
  assert cpu_options.compiler_options(False, 'cpu', '0.12.0.1') is None
  assert cpu_options.compiler_options(True, 'gpu', '0.12.0.1') is None
  # XLA rejects an unknown option: a jaxlib not known to have it gets none.
  assert cpu_options.compiler_options(True, 'cpu', '0.13.0') is None


def _ynn_fusions(hlo: str) -> int:
  return hlo.count('"kind":"__ynn_fusion"')


def test_the_option_fuses_elementwise_ops_into_the_dot():
  """Under the option XLA:CPU fuses the tanh and add into the dot's YNNPACK fusion (the root)."""

  def f(a, b):
    return jnp.tanh(a @ b) + 1

  x = jnp.ones((64, 64))
  roots = {}
  for on in (False, True):
    hlo = jax.jit(f, compiler_options=cpu_options.compiler_options(on)).lower(x, x).compile()
    roots[on] = [line for line in hlo.as_text().splitlines() if line.strip().startswith('ROOT')][-1]
  assert roots[True].split()[1] == '%ynn_fusion'
  assert roots[False].split()[1] != '%ynn_fusion'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds')
  data.prepare(th.tiny_config(d)[0].data)
  return str(d)


def test_a_runs_steps_are_compiled_with_it(data_dir, tmp_path):
  # configs/tiny.py's cnn_bn at 32 px: convs, BatchNorm and dense layers, as in resnet18 (which
  # took 11 s to compile twice here, cnn_bn 4 s; both fuse more of the train step when on).
  counts = {}
  for on in (False, True):
    config, _ = th.tiny_config(data_dir, **{'model.cpu_ynn_fusion': on})
    assert (config.model.name, config.data.image_size) == ('cnn_bn', 32)
    run = loop.make_run(config, str(tmp_path / str(on)))
    batch = {
      'image': jax.ShapeDtypeStruct((config.train.batch_size, 32, 32, 1), jnp.uint8),
      'label': jax.ShapeDtypeStruct((config.train.batch_size,), jnp.int32),
    }
    counts[on] = [
      _ynn_fusions(step.lower(*args).compile().as_text())
      for step, args in (
        (run.train_step, (run.abstract_state, batch, jax.random.key(0))),
        (run.eval_step, (run.abstract_state, batch)),
      )
    ]
  (train_off, eval_off), (train_on, eval_on) = counts[False], counts[True]
  assert train_on > train_off, counts  # more of the step's ops in YNNPACK fusions
  assert eval_on != eval_off, counts  # fewer, larger ones here: compiled differently


def test_a_runs_init_compiles_at_o0_on_cpu_only(data_dir, tmp_path, monkeypatch):
  """The train state's init runs once per run: compiled at -O0 on CPU (3-5x faster to compile,
  scripts/init_compile_ab.py), with the platform's defaults elsewhere."""
  assert cpu_options.run_once_options('cpu') == {'xla_backend_optimization_level': 0}
  assert cpu_options.run_once_options('gpu') is None
  assert cpu_options.run_once_options('tpu') is None
  config, _ = th.tiny_config(data_dir)
  run = loop.make_run(config, str(tmp_path))
  options = []
  real_jit = jax.jit

  def spy(fun, **kwargs):
    options.append((fun, kwargs.get('compiler_options')))
    return real_jit(fun, **kwargs)

  monkeypatch.setattr(jax, 'jit', spy)
  state = loop.fresh_state(run, jax.random.key(0))
  assert options == [(run.init_state, cpu_options.RUN_ONCE)]
  assert int(state.step) == 0
