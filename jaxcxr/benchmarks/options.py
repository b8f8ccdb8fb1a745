"""`launch.benchmark --option_ab`: XLA:CPU compiler options A/B'd on the real train step, in one
process.

Separate benchmark processes on a 2-core VM differ by 10-25 % for the same build (measured: one
model's train img/s ranged 55.7-71.5 over six runs in 15 minutes), too much to judge an option
worth 5 %. Here the train step is compiled twice, without and with `cpu_options.YNN_FUSION` (as the
steps of a run with `config.model.cpu_ynn_fusion` are), and the two executables run alternately,
step by step, on the same batch; the medians are compared.
"""

import json
import os
import statistics
import time
from typing import Sequence

import jax

from jaxcxr import models
from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import guard as benchmark_guard
from jaxcxr.training import cpu_options


def option_ab(arch: str, image_size: int, batch_size: int, rounds: int,
              options: dict[str, str]) -> dict:
  """Median ms per train step of `arch` without / with `options`, steps alternating."""
  module = models.build(arch, benchmark.NUM_CLASSES)
  batch = benchmark.random_batch(batch_size, image_size)
  key = jax.random.key(0)
  runs = {}
  for name, opts in (('without', None), ('with', options)):
    state = benchmark.make_state(module, image_size)
    compiled, timings = benchmark.compile_train_step(module, state, batch, key,
                                                     compiler_options=opts)
    state, metrics = compiled(state, batch, key)   # warm-up
    jax.block_until_ready(metrics)
    runs[name] = {'compiled': compiled, 'state': state, 'times': [],
                  'compile_s': timings['compile_s']}
  load_before = os.getloadavg()[0]
  for _ in range(rounds):
    for run in runs.values():
      t = time.perf_counter()
      run['state'], metrics = run['compiled'](run['state'], batch, key)
      jax.block_until_ready(metrics)
      run['times'].append(time.perf_counter() - t)
  ms = {name: 1e3 * statistics.median(run['times']) for name, run in runs.items()}
  return {'arch': arch, 'image_size': image_size, 'batch': batch_size, 'rounds': rounds,
          'without_ms': ms['without'], 'with_ms': ms['with'],
          'speedup': ms['without'] / ms['with'],
          'compile_s': {name: run['compile_s'] for name, run in runs.items()},
          'loadavg': (load_before, os.getloadavg()[0])}


def format_rows(rows: Sequence[dict]) -> str:
  lines = ['| arch (px, batch) | without ms | with ms | speed-up | compile s without / with '
           '| load before / after |', '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['arch']} ({r['image_size']}, {r['batch']}) | {r['without_ms']:.1f} | "
                 f"{r['with_ms']:.1f} | {r['speedup']:.2f}x | {r['compile_s']['without']:.1f} / "
                 f"{r['compile_s']['with']:.1f} | {r['loadavg'][0]:.2f} / {r['loadavg'][1]:.2f} |")
  return '\n'.join(lines)


def option_ab_main(archs: Sequence[str], *, image_size: int, batch: int, rounds: int,
                   out: str = '') -> int:
  """Prints the table of `option_ab` over `archs` for `cpu_options.YNN_FUSION`."""
  print(f'options: {cpu_options.YNN_FUSION}', flush=True)
  rows = []
  for arch in archs:
    rows.append(option_ab(arch, image_size, batch, rounds, dict(cpu_options.YNN_FUSION)))
    print(f"{arch}: {rows[-1]['speedup']:.2f}x", flush=True)
  print(format_rows(rows))
  busy = [r['arch'] for r in rows if max(r['loadavg']) > benchmark_guard.max_load()]
  if busy:
    print(f'UNDER LOAD (load average above {benchmark_guard.max_load():.2f}, the benchmark '
          f'included): {", ".join(busy)}. The alternation evens out load, but re-run idle.')
  if out:
    with open(out, 'w') as f:
      json.dump(rows, f, indent=1)
  return 0
