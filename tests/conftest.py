"""Suite-wide setup: how pytest-xdist may split the suite (scripts/test.sh runs `-n 2 --dist
loadgroup`).

Each test file is one xdist group, so its module-scoped fixtures (a prepared dataset, a trained
workdir, a batch of CLI runs) are built once, on the worker that runs the file. tests/reliability
is one group as a whole: its session fixtures (the prepared data, the reference training run)
are shared by all its files and must not be built once per worker. Without xdist
the marks do nothing.

Compiled programs are shared through one persistent XLA cache per suite run (in-process compiles
and every `launch.train` subprocess, which reads JAXCXR_JIT_CACHE): the suite compiles the same
tiny models hundreds of times, and a repeated tiny run takes 4 s instead of 14 s (measured). The
same programs compile with XLA's backend at -O0 (`train_helpers.FAST_COMPILE_XLA_FLAG`), except in
runs that ask for the default optimisation.

The commands the tests run (`python -m launch.<x>`) start warm where start-up is not what they
test: forked from a server that imported the libraries once (tests/warm.py).
"""

import gc
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

from tests import train_helpers

TESTS = pathlib.Path(__file__).resolve().parent


def xdist_group(path: pathlib.Path) -> str:
  """The group of a test file: 'reliability' for tests/reliability/*, else its path."""
  rel = path.resolve().relative_to(TESTS)
  return 'reliability' if rel.parts[0] == 'reliability' else rel.as_posix()


_CACHE_ENV = 'JAXCXR_JIT_CACHE'


def pytest_configure(config):
  """The controller (or a run without xdist) makes the cache; xdist workers inherit its path."""
  if not hasattr(config, 'workerinput'):
    config._jaxcxr_jit_cache = tempfile.mkdtemp(prefix='jaxcxr_test_jit_cache_')  # pylint: disable=protected-access
    os.environ[_CACHE_ENV] = config._jaxcxr_jit_cache  # pylint: disable=protected-access
  os.environ['JAXCXR_JIT_CACHE_MIN_COMPILE_S'] = '0'
  # Before any test initialises the backend (XLA reads XLA_FLAGS then); see train_helpers.
  os.environ['XLA_FLAGS'] = train_helpers.with_fast_compile(os.environ.get('XLA_FLAGS', ''))
  jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_collection_finish(session):
  """After collection: the imported libraries (jax, flax, torch, TFDS ...) out of the cyclic
  garbage collector's reach, and full collections rarer.

  A worker's heap grows with every compiled program it keeps; at Python's default thresholds it
  ran ~50 full collections of ~0.4 s each (~60 s of the two workers' time, measured with
  gc.callbacks; docs/PERFORMANCE.md "Garbage collection"). Test-only: a worker lives for the
  whole suite and its cyclic garbage may wait longer.
  """
  del session
  gc.freeze()
  gc.set_threshold(10_000, 10, 100)


def pytest_unconfigure(config):
  """The suite's cache removed; the heap collected once, then frozen.

  pytest's unraisable-exception check runs five full collections after this hook (its cleanup), to
  catch exceptions raised in finalizers of garbage. One full collection here, while that check's
  hook is still installed, reports them as well; frozen, the heap makes its five passes cheap. The
  last worker's end took 2.9 s, mostly those passes over a heap of compiled programs (~0.8 s each,
  measured with py-spy), while the run waited for it.
  """
  path = getattr(config, '_jaxcxr_jit_cache', None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
  gc.collect()
  gc.freeze()


# The groups by their seconds of test time, longest first (a -n 2 run on the 2-core box,
# 2026-12-07: 135, 104, 66, 59, 53, 34, 30 ... down to ~4 s; the rest, each under 3 s, follow in
# file order). scripts/test.sh passes --no-loadscope-reorder, so xdist hands groups out in this
# collection order: each worker takes the next group when it is almost out of work, and the last
# groups handed out are short, so both workers end together (with only the longest eight listed,
# one worker ended 10 s before the other). By default xdist orders groups by test count, which put
# three-test test_learning.py (the longest) last, alone at the end.
LONGEST_FIRST = (
  'test_learning.py',
  'test_train.py',
  'models/test_parity.py',
  'test_benchmark.py',
  'reliability',
  'test_launch.py',
  'test_benchmark_quality.py',
  'test_finetune.py',
  'test_eval_cli.py',
  'test_dicom_privacy.py',
  'test_explore.py',
  'models/test_densenet_scan.py',
  'test_cam_evidence.py',
  'test_sweep.py',
  'models/test_shapes.py',
  'test_ood.py',
  'test_gradcam.py',
  'test_weights.py',
  'test_mixing.py',
  'models/test_conv.py',
  'test_convert_cli.py',
  'test_ema.py',
  'test_sharding.py',
  'models/test_small_cnn.py',
  'test_steps.py',
  'data/test_loader.py',
  'test_warm.py',
  'test_benchmark_dicom.py',
  'test_export.py',
  'test_architecture.py',
  'models/test_pool.py',
  'test_cpu_options.py',
  'data/test_builder.py',
  'test_tta.py',
  'data/test_cxr_dev.py',
  'data/test_dicom.py',
)


def _start_rank(group: str) -> int:
  return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))
  items.sort(key=lambda item: _start_rank(xdist_group(item.path)))  # stable: file order kept
