"""`launch.benchmark --option_ab`: variants of the real train step A/B'd in one process.

Separate benchmark processes on a 2-core VM differ by 10-25 % for the same build (measured: one
model's train img/s ranged 55.7-71.5 over six runs in 15 minutes), too much to judge a change worth
5 %. Here the train step is compiled once per variant, and the executables run in turn, step by
step, on the same batch; the medians are compared with the first variant's.

A variant is a name from `VARIANTS`: XLA:CPU compiler options of the compile (as
`config.model.cpu_options` passes them), and/or a code path of `jaxcxr.models.layers` swapped for
XLA's own while the step is traced (`xla_wgrad`: XLA's conv weight gradient instead of im2col, and
XLA's convs on maps smaller than the kernel; `xla_small_maps`: only the latter).
Join names with '+' to combine them (`onednn+xla_wgrad`).
"""

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator, Sequence

import jax

from jaxcxr import models
from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import compare as benchmark_compare
from jaxcxr.benchmarks import guard as benchmark_guard
from jaxcxr.models import layers
from jaxcxr.training import cpu_options


@contextlib.contextmanager
def _patched(name: str, value) -> Iterator[None]:
  """While tracing: `jaxcxr.models.layers.<name>` is `value` (a workaround swapped for XLA's
  own)."""
  original = getattr(layers, name)
  setattr(layers, name, value)
  try:
    yield
  finally:
    setattr(layers, name, original)


# pylint: disable=protected-access
def _xla_wgrad():
  """Convolutions differentiate with XLA's own rules (no im2col weight gradient)."""
  return _patched('conv2d', lambda x, k, stride, padding, *_: layers._conv2d(x, k, stride, padding))


def _xla_scan_igrad():
  """Convolutions in DenseNet's scanned blocks keep XLA's input gradient (im2col weight grad
  kept)."""
  conv2d = layers.conv2d
  return _patched('conv2d', lambda x, k, stride, padding, *_: conv2d(x, k, stride, padding, False))


def _xla_small_maps():
  """Convolutions on maps smaller than their kernel keep XLA's forward and input gradient (no
  matmuls there; the im2col weight gradient kept)."""
  return _patched('smaller_than_kernel', lambda hw, kernel_shape: False)


def _xla_pool():
  """Tiled max-pools differentiate with XLA's select-and-scatter (no gradient by taps)."""
  return _patched('_tiled_max_pool', lambda x, window: layers._max_pool(x, window, window, 0))


# pylint: enable=protected-access


# name -> (compiler options, context manager factory or None)
VARIANTS = {
  'base': ({}, None),
  'ynn': (dict(cpu_options.OPTIONS['ynn']), None),
  'onednn': (dict(cpu_options.OPTIONS['onednn']), None),
  'xla_wgrad': ({}, _xla_wgrad),
  'xla_scan_igrad': ({}, _xla_scan_igrad),
  'xla_pool': ({}, _xla_pool),
  'xla_small_maps': ({}, _xla_small_maps),
}


def parse_variant(spec: str) -> tuple[dict, list]:
  """'onednn+xla_wgrad' -> (merged compiler options, context managers to trace under)."""
  options, contexts = {}, []
  for name in spec.split('+'):
    if name not in VARIANTS:
      raise ValueError(
        f"variant {name!r} (in {spec!r}): expected names from {sorted(VARIANTS)} joined by '+'."
      )
    opts, ctx = VARIANTS[name]
    options.update(opts)
    if ctx is not None:
      contexts.append(ctx)
  return options, contexts


def variant_ab(
  arch: str, image_size: int, batch_size: int, rounds: int, variants: Sequence[str]
) -> dict:
  """Median ms per train step of `arch` for each variant, steps alternating round-robin."""
  name, overrides = benchmark_compare.parse_spec(arch)
  overrides, _ = benchmark_compare.split_options(overrides)  # the variants set the options
  module = models.build(name, benchmark.NUM_CLASSES, **overrides)
  batch = benchmark.random_batch(batch_size, image_size)
  key = jax.random.key(0)
  runs = {}
  for spec in variants:
    options, contexts = parse_variant(spec)
    state = benchmark.make_state(module, image_size)
    with contextlib.ExitStack() as stack:
      for ctx in contexts:
        stack.enter_context(ctx())
      compiled, timings = benchmark.compile_train_step(
        module, state, batch, key, compiler_options=options or None
      )
    state, metrics = compiled(state, batch, key)  # warm-up
    jax.block_until_ready(metrics)
    runs[spec] = {
      'compiled': compiled,
      'state': state,
      'times': [],
      'compile_s': timings['compile_s'],
    }
  load_before = os.getloadavg()[0]
  for _ in range(rounds):
    for run in runs.values():
      t = time.perf_counter()
      run['state'], metrics = run['compiled'](run['state'], batch, key)
      jax.block_until_ready(metrics)
      run['times'].append(time.perf_counter() - t)
  ms = {spec: 1e3 * statistics.median(run['times']) for spec, run in runs.items()}
  first = variants[0]
  return {
    'arch': arch,
    'image_size': image_size,
    'batch': batch_size,
    'rounds': rounds,
    'variants': list(variants),
    'ms': ms,
    'speedup': {spec: ms[first] / ms[spec] for spec in variants},
    'compile_s': {spec: run['compile_s'] for spec, run in runs.items()},
    'loadavg': (load_before, os.getloadavg()[0]),
  }


def format_rows(rows: Sequence[dict]) -> str:
  """One line per arch and variant: ms per step, speed-up over the arch's first variant."""
  lines = [
    '| arch (px, batch) | variant | ms per step | vs first | compile s | load before / after |',
    '|---|---|---|---|---|---|',
  ]
  for r in rows:
    for spec in r['variants']:
      lines.append(
        f'| {r["arch"]} ({r["image_size"]}, {r["batch"]}) | {spec} | '
        f'{r["ms"][spec]:.1f} | {r["speedup"][spec]:.2f}x | {r["compile_s"][spec]:.1f} | '
        f'{r["loadavg"][0]:.2f} / {r["loadavg"][1]:.2f} |'
      )
  return '\n'.join(lines)


def option_ab_main(
  archs: Sequence[str],
  *,
  image_size: int,
  batch: int,
  rounds: int,
  variants: Sequence[str] = ('base', 'onednn'),
  out: str = '',
) -> int:
  """Prints the table of `variant_ab` over `archs` and `variants`."""
  for spec in variants:
    print(f'{spec}: {parse_variant(spec)[0] or "no compiler options"}', flush=True)
  rows = []
  for arch in archs:
    rows.append(variant_ab(arch, image_size, batch, rounds, variants))
    print(f'{arch}: ' + ', '.join(f'{s} {rows[-1]["ms"][s]:.0f} ms' for s in variants), flush=True)
  print(format_rows(rows))
  busy = [r['arch'] for r in rows if max(r['loadavg']) > benchmark_guard.max_load()]
  if busy:
    print(
      f'UNDER LOAD (load average above {benchmark_guard.max_load():.2f}, the benchmark '
      f'included): {", ".join(busy)}. The alternation evens out load, but re-run idle.'
    )
  if out:
    with open(out, 'w') as f:
      json.dump(rows, f, indent=1)
  return 0
