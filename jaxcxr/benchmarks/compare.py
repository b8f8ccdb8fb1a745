"""JAX vs torchvision, one architecture at a time, steps alternating between the two workers.

For each architecture: a JAX worker (`benchmark_worker`, a fresh persistent compilation cache)
and the reference worker (scripts/torch_reference.py, a command the launcher passes in: no torch
in jaxcxr) are started one after the other, so neither's set-up (the JAX compile) overlaps the
other. Then, per key (`train/float32`, `train/bfloat16`, `eval/...`): one untimed warm-up step on
each side, and `steps` rounds of (jax step, reference step), back to back; each side reports the
median. A third, compile-only JAX worker re-compiles the float32 train step from the cache (warm
compile). Load is checked around every architecture (`benchmark_guard`).
"""

import functools
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import guard
from jaxcxr.training import cpu_options

MIN_STEPS = 5


class WorkerError(RuntimeError):
  """A worker died, timed out or answered nonsense; the message ends with its stderr tail."""


class Worker:
  """A benchmark worker process speaking the JSON-lines protocol of `benchmark_worker`."""

  def __init__(self, name: str, cmd: Sequence[str], setup: dict, timeout_s: float):
    self.name = name
    self.timeout_s = timeout_s
    self._err = tempfile.TemporaryFile(mode='w+')  # noqa: SIM115 (lives as long as the worker; finish() closes it)
    self._proc = subprocess.Popen(
      [*cmd, '--setup=' + json.dumps(setup)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._err,
      text=True,
      bufsize=1,
    )
    ready = self._read()
    if 'ready' not in ready:
      raise self._error(f'expected a ready line, got {ready!r}')
    self.info: dict = ready['ready']
    self.keys: list[str] = ready['keys']

  def _stderr_tail(self, n: int = 3000) -> str:
    self._err.seek(0)
    return self._err.read()[-n:]

  def _error(self, what: str) -> WorkerError:
    self.kill()
    return WorkerError(f'{self.name} worker: {what}\n--- stderr tail ---\n{self._stderr_tail()}')

  def _read(self) -> dict:
    ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout_s)
    if not ready:
      raise self._error(f'no answer within {self.timeout_s:.0f} s')
    line = self._proc.stdout.readline()
    if not line:
      raise self._error(f'exited with status {self._proc.wait()}')
    return json.loads(line)

  def request(self, **req) -> dict:
    try:
      self._proc.stdin.write(json.dumps(req) + '\n')
      self._proc.stdin.flush()
    except BrokenPipeError as e:
      raise self._error(f'exited with status {self._proc.wait()}') from e
    return self._read()

  def step(self, key: str) -> float:
    return float(self.request(op='step', key=key)['s'])

  def finish(self) -> dict:
    done = self.request(op='finish').get('done', {})
    self._proc.wait(timeout=self.timeout_s)
    self._err.close()
    return done

  def kill(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
    self._proc.wait()


def parse_spec(spec: str) -> tuple[str, dict]:
  """'densenet201:me' -> ('densenet201', {'memory_efficient': True}), 'densenet201:scan8' ->
  ('densenet201', {'scan_chunk': 8}), 'resnet101:ynn' -> ('resnet101', {'cpu_options': 'ynn'})
  (XLA:CPU compiler options of `jaxcxr.training.cpu_options.OPTIONS`, as the model's config sets
  them); suffixes combine ('densenet201:scan8:ynn'); plain names pass through."""
  name, *suffixes = spec.split(':')
  overrides = {}
  for suffix in suffixes:
    if suffix == 'me':
      overrides['memory_efficient'] = True
    elif suffix.startswith('scan') and suffix[4:].isdigit() and int(suffix[4:]) > 0:
      overrides['scan_chunk'] = int(suffix[4:])
    elif suffix in cpu_options.OPTIONS:
      overrides['cpu_options'] = suffix
    else:
      raise ValueError(
        f'arch {spec!r}: the suffixes are ":me" (DenseNet memory_efficient=True), '
        f'":scanN" (DenseNet scan_chunk=N, N > 0) and the XLA:CPU option sets '
        f'{", ".join(":" + k for k in cpu_options.OPTIONS)}.'
      )
  return name, overrides


def split_options(overrides: dict) -> tuple[dict, dict | None]:
  """(model overrides, compiler options) of a `parse_spec` result."""
  overrides = dict(overrides)
  name = overrides.pop('cpu_options', '')
  return overrides, (dict(cpu_options.OPTIONS[name]) if name else None)


def alternate(workers: Sequence[Worker], key: str, steps: int) -> dict[str, list[float]]:
  """One warm-up step per worker, then `steps` rounds of one step each, in worker order."""
  for w in workers:
    w.step(key)
  times = {w.name: [] for w in workers}
  for _ in range(steps):
    for w in workers:
      times[w.name].append(w.step(key))
  return times


def measure_arch(
  spec: str,
  *,
  jax_cmd: Sequence[str],
  torch_cmd: Sequence[str] | None,
  image_size: int,
  batch: int,
  steps: int,
  dtypes: Sequence[str],
  parts: Sequence[str],
  warm_compile: bool = True,
  channels_last: bool = False,
  timeout_s: float = 3600.0,
) -> dict[str, Any]:
  """Runs one architecture (see the module docstring). Returns a flat row; errors are fields."""
  if steps < MIN_STEPS:
    raise ValueError(f'steps={steps}: take the median of at least {MIN_STEPS} timed steps.')
  name, overrides = parse_spec(spec)
  base = {
    'arch': name,
    'overrides': overrides,
    'image_size': image_size,
    'batch': batch,
    'dtypes': list(dtypes),
    'parts': list(parts),
  }
  row: dict[str, Any] = {'arch': spec, 'image_size': image_size, 'batch': batch, 'steps': steps}
  with tempfile.TemporaryDirectory(prefix='jaxcxr_bench_cache_') as cache:
    workers = []
    try:
      t = time.perf_counter()
      workers.append(Worker('jax', jax_cmd, {**base, 'cache_dir': cache}, timeout_s))
      row['jax_setup_s'] = time.perf_counter() - t
      row.update(workers[0].info)
      if torch_cmd:
        try:
          workers.append(
            Worker('torch', torch_cmd, {**base, 'channels_last': channels_last}, timeout_s)
          )
          row.update({f'torch_info_{k}': v for k, v in workers[1].info.items()})
        except WorkerError as e:  # e.g. no torchvision model of that name: JAX row alone
          row['torch_error'] = str(e)
      keys = list(workers[0].keys)
      keys += [k for w in workers[1:] for k in w.keys if k not in keys]
      for key in keys:
        sides = [w for w in workers if key in w.keys]
        for side, times in alternate(sides, key, steps).items():
          row[f'{side}_{key}_times'] = times
          row[f'{side}_{key}_img_s'] = batch / statistics.median(times)
      for w in workers:
        row[f'{w.name}_peak_rss_mb'] = w.finish().get('peak_rss_mb')
    except WorkerError as e:
      row['error'] = str(e)
      for w in workers:
        w.kill()
      return row
    if warm_compile:
      try:
        warm = Worker(
          'jax-warm',
          jax_cmd,
          {**base, 'dtypes': ['float32'], 'cache_dir': cache, 'compile_only': True},
          timeout_s,
        )
        row['warm_compile_s_float32'] = warm.info.get('compile_s_float32')
        row['warm_trace_lower_s_float32'] = warm.info.get('trace_lower_s_float32')
        warm.finish()
      except WorkerError as e:
        row['warm_error'] = str(e)
  return row


def derive(row: dict, machine_flops: float | None = None) -> dict:
  """Adds jax/torch ratios per key, cold / warm compile totals (trace + lower + compile) and,
  given the machine's matmul FLOP/s, the train step's achieved GFLOP/s and its share of it."""
  row = dict(row)
  for k in [k for k in row if k.startswith('jax_') and k.endswith('_img_s')]:
    other = row.get('torch_' + k[len('jax_') :])
    if other:
      row['ratio_' + k[len('jax_') : -len('_img_s')]] = row[k] / other
  for dtype in ('float32', 'bfloat16'):
    flops, img_s = row.get(f'train_flops_{dtype}'), row.get(f'jax_train/{dtype}_img_s')
    if flops and img_s:
      row[f'train_gflop_s_{dtype}'] = flops * img_s / row['batch'] / 1e9
      if machine_flops:
        row[f'train_pct_matmul_{dtype}'] = 100 * row[f'train_gflop_s_{dtype}'] * 1e9 / machine_flops
  for dtype in ('float32', 'bfloat16'):
    if f'compile_s_{dtype}' in row:
      row[f'cold_compile_total_s_{dtype}'] = (
        row[f'trace_lower_s_{dtype}'] + row[f'compile_s_{dtype}']
      )
  if row.get('warm_compile_s_float32') is not None:
    row['warm_compile_total_s_float32'] = (
      row['warm_trace_lower_s_float32'] + row['warm_compile_s_float32']
    )
  return row


def run(
  specs: Sequence[str],
  *,
  allow_load: bool,
  max_load_per_core: float,
  max_foreign_per_core: float,
  settle_s: float,
  log=print,
  **measure_kwargs,
) -> tuple[list[dict], str | None]:
  """All architectures with the load checks around each.

  Returns:
    (rows, refusal): `refusal` is the message to exit with when the machine was busy and
    `allow_load` is False (the rows so far are still returned, each with its load verdict).
  """
  limit = guard.max_load(max_load_per_core)
  foreign_limit = max_foreign_per_core * guard.cores()
  rows = []
  for spec in specs:
    quiet, load1, waited = guard.wait_until_quiet(limit, settle_s)
    log(
      f'{spec}: load average {load1:.2f} (limit {limit:.2f}'
      + (f', waited {waited:.0f} s' if waited else '')
      + ')'
    )
    if not quiet and not allow_load:
      return rows, guard.busy_message(
        [
          f'1-minute load average {load1:.2f} > {limit:.2f} after '
          f'waiting {waited:.0f} s before {spec}'
        ]
      )
    meter = guard.CpuMeter().start()
    row = measure_arch(spec, **measure_kwargs)
    verdict = guard.judge(
      load1, os.getloadavg()[0], meter.stop(), limit=limit, foreign_limit=foreign_limit
    )
    row.update(verdict.as_dict())
    rows.append(row)
    log(
      f'{spec}: done; '
      + ('clean' if verdict.ok else 'UNDER LOAD: ' + '; '.join(verdict.problems))
      + (f'; error: {row["error"].splitlines()[0]}' if 'error' in row else '')
    )
    if not verdict.ok and not allow_load:
      return rows, guard.busy_message(verdict.problems)
  return rows, None


# ----------------------------------------------------------------------------- report


def _cell(row: dict, key: str) -> str:
  jax_v, torch_v = row.get(f'jax_{key}_img_s'), row.get(f'torch_{key}_img_s')
  if jax_v is None and torch_v is None:
    return '-'
  text = f'{jax_v:.2f}' if jax_v is not None else '-'
  if torch_v is not None:
    text += f' ({torch_v:.2f})'
  if row.get(f'ratio_{key}') is not None:
    text += f' {row[f"ratio_{key}"]:.2f}x'
  return text


def _num(v, digits=1) -> str:
  return '-' if v is None else f'{v:.{digits}f}'


def format_table(rows: Sequence[dict], dtypes: Sequence[str], parts: Sequence[str]) -> str:
  """Markdown: img/s as 'jax (torch) ratio' per key, compile, memory and the load verdict."""
  keys = [f'{p}/{d}' for p in parts for d in dtypes if p != 'gradcam' or d == 'float32']
  head = (
    ['arch']
    + [f'{k} img/s jax (torch) ratio' for k in keys]
    + [
      'compile cold / warm s',
      'XLA temp MiB',
      'peak RSS MiB jax / torch',
      'load before / after, other cores',
    ]
  )
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = (
      [r['arch']]
      + [_cell(r, k) for k in keys]
      + [
        f'{_num(r.get("cold_compile_total_s_float32"))} / '
        f'{_num(r.get("warm_compile_total_s_float32"))}',
        ' / '.join(_num(r.get(f'train_temp_mb_{d}'), 0) for d in dtypes),
        f'{_num(r.get("jax_peak_rss_mb"), 0)} / {_num(r.get("torch_peak_rss_mb"), 0)}',
        f'{_num(r.get("loadavg_before"), 2)} / {_num(r.get("loadavg_after"), 2)}, '
        f'{_num(r.get("foreign_cores"), 2)}' + ('' if r.get('load_ok', True) else ' UNDER LOAD'),
      ]
    )
    if 'error' in r:
      cells[1] = 'error: ' + r['error'].splitlines()[0][:80]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def banner(rows: Sequence[dict]) -> str:
  """A loud line when any row was measured under load ('' when all were clean)."""
  bad = [r['arch'] for r in rows if not r.get('load_ok', True)]
  if not bad:
    return ''
  return (
    '!' * 78 + f'\n!! UNDER LOAD ({", ".join(bad)}): these are NOT benchmark figures; re-run '
    'on an idle machine.\n' + '!' * 78
  )


def python_cmd(*args: str) -> list[str]:
  """`[sys.executable, *args]`: how the launcher builds worker commands."""
  return [sys.executable, *args]


def compare_main(
  specs: Sequence[str],
  *,
  out: str,
  matmul_n: int,
  allow_load: bool,
  max_load_per_core: float,
  max_foreign_per_core: float,
  settle_s: float,
  **measure_kwargs,
) -> int:
  """The `launch.benchmark` default mode: header, every arch, table, JSON. Returns exit status."""
  header = benchmark.machine_header(matmul_n)
  print(
    f'{header["cpus"]} CPUs, {header["device"]}; load average {header["loadavg_start"][0]:.2f};'
    f' float32 {matmul_n}^2 matmul: {header["matmul_gflop_s"]:.1f} GFLOP/s',
    flush=True,
  )
  rows, refusal = run(
    specs,
    allow_load=allow_load,
    max_load_per_core=max_load_per_core,
    max_foreign_per_core=max_foreign_per_core,
    settle_s=settle_s,
    log=functools.partial(print, flush=True),
    **measure_kwargs,
  )
  rows = [derive(r, header['matmul_gflop_s'] * 1e9) for r in rows]
  loud = banner(rows)
  if loud:
    print(loud)
  print(format_table(rows, measure_kwargs['dtypes'], measure_kwargs['parts']))
  if loud:
    print(loud)
  benchmark.write_json(
    out, {'machine': header, 'command': ' '.join(sys.argv), 'rows': rows, 'refused': refusal}
  )
  if refusal:
    print(refusal, file=sys.stderr)
    return guard.BUSY_EXIT
  errors = [r['arch'] for r in rows if 'error' in r]
  if errors:
    print(f'Failed: {", ".join(errors)} (the error is in the table and the JSON).', file=sys.stderr)
    return 1
  return 0
