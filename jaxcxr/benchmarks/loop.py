"""Loop overhead: the real `train_and_evaluate` loop vs its bare jitted step (issue #14 item 3).

The model is tiny on purpose (`cnn_small` on 16 px phantom images: a jitted step of about a
millisecond on a 2-core CPU), so whatever the loop does per step on the host (data, batch
assembly, dispatch, host syncs, logging) shows up against it, as it would against a fast
accelerator step.

- Loop rate: `train_and_evaluate` on a copy of the config with one long epoch (more training
  examples than timed steps, so no validation or epoch-end checkpoint falls inside the timed
  steps) and no periodic checkpoints. The loop logs `images_per_s` every `log_every` steps,
  measured between two host syncs (the loop reads the metrics), after the compiling first step;
  the loop rate is the median window.
- Bare rate: the same jitted `train_step` object (`loop.make_run`) called back to back on one
  device batch, blocked once at the end; measured before and after the loop run (mean of both).
- The loop's own cost: a second `train_and_evaluate` run with the data pipeline replaced by a
  few batches held in memory (`loader.train_iterator` patched to cycle them, ~0.06 ms per `next`).
  On a CPU-only machine the real pipeline (decode, augment, batch: a few ms per step here) runs on
  the same cores as the "device" step and can only slow it; on a GPU / TPU host it runs beside the
  device. So the report gives both: the overhead with the real pipeline, and the overhead of the
  loop itself (the last line, `loop overhead: N%`, the issue-#14 target of < 10%).
- Breakdown (where the difference goes): the loader's `next()` alone, `sharding.global_batch`,
  the dispatch time of the jitted call, the bare step with a per-step host read of the previous
  step's metrics (as `check_finite` does), and a cProfile of a second loop run: the cumulative
  time of each function `train_loop` calls, per step.
"""

import cProfile
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import grain
import jax
import ml_collections

from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import guard
from jaxcxr.data import loader
from jaxcxr.training import loop, run_log, sharding


def loop_config(
  config: ml_collections.ConfigDict,
  *,
  steps: int,
  log_every: int,
  model: str = 'cnn_small',
  image_size: int = 16,
  data_dir: str = '',
) -> ml_collections.ConfigDict:
  """The benchmark's copy of `config`: tiny model and images, one epoch longer than `steps`.

  Args:
    config: a training config (e.g. configs/tiny.py); its data, loader and optimizer settings
      are kept.
    steps: timed steps (the run's `max_steps`).
    log_every: steps per timing window (`train.log_every_steps`).
    model, image_size: the tiny model and input side.
    data_dir: TFDS data_dir override ('' keeps the config's).
  """
  if steps < 2 * log_every:
    raise ValueError(
      f'loop steps={steps} must cover at least two windows of log_every={log_every} steps.'
    )
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.name = model
  c.model.pretrained = ''
  c.data.image_size = image_size
  c.data.phantom.image_size = max(image_size, 32)  # the phantom drawing needs >= 32 px
  if data_dir:
    c.data.data_dir = data_dir
  train_fraction = 1.0 - c.data.val_fraction - c.data.test_fraction
  classes = 3 if c.data.builder_config == '3class' else 4
  # Enough training examples that one epoch outlasts the timed steps (10% margin for the split).
  c.data.source = 'phantom'
  c.data.phantom.num_per_class = math.ceil(
    1.1 * (steps + 1) * c.train.batch_size / (train_fraction * classes)
  )
  c.train.max_steps = steps
  c.train.num_epochs = 1
  c.train.log_every_steps = log_every
  c.checkpoint.every_steps = 10 * steps
  c.eval.bootstrap = min(c.eval.bootstrap, 20)
  return c


def window_rates(workdir: str, global_batch: int) -> list[float]:
  """Steps/s of each logged window of a finished run (from metrics.jsonl 'train' rows)."""
  rows = run_log.read_rows(workdir, 'train')
  if not rows or any('images_per_s' not in r for r in rows):
    raise ValueError(
      f'{workdir}/metrics.jsonl has no images_per_s in its train rows: the loop '
      'no longer logs its throughput, which this benchmark reads.'
    )
  return [r['images_per_s'] / global_batch for r in rows]


def _bare_steps_per_s(run: loop.Run, state, batch, key, steps: int) -> tuple[Any, float, float]:
  """(state, steps/s of back-to-back calls blocked once at the end, mean dispatch ms per call)."""
  dispatch = 0.0
  t0 = time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = run.train_step(state, batch, key)
    dispatch += time.perf_counter() - t
  jax.block_until_ready((state, metrics))
  return state, steps / (time.perf_counter() - t0), 1e3 * dispatch / steps


def _synced_steps_per_s(run: loop.Run, state, batch, key, steps: int) -> tuple[Any, float]:
  """Like the bare loop, but each step reads the previous step's `finite` flag on the host."""
  pending = None
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = run.train_step(state, batch, key)
    if pending is not None:
      bool(jax.device_get(pending['finite']))
    pending = metrics
  jax.block_until_ready((state, metrics))
  return state, steps / (time.perf_counter() - t0)


def _ms_per_call(fn: Callable[[], Any], calls: int, warmup: int = 5) -> float:
  for _ in range(warmup):
    fn()
  t = time.perf_counter()
  for _ in range(calls):
    fn()
  return 1e3 * (time.perf_counter() - t) / calls


class BareStep:
  """The loop's jitted train step (`loop.make_run`) on one device batch, outside the loop."""

  def __init__(self, config, workdir: str):
    self.run = loop.make_run(config, workdir)
    self.key = jax.random.key(0)
    self.state = jax.jit(self.run.init_state, out_shardings=self.run.state_sharding)(self.key)
    self.iterator = loader.train_iterator(
      config.data, self.run.handle, local_batch_size=config.train.batch_size, seed=config.seed
    )
    self.batch = sharding.global_batch(next(self.iterator), self.run.mesh)
    self.state, _, _ = _bare_steps_per_s(self.run, self.state, self.batch, self.key, 5)  # compile

  def measure(self, steps: int) -> dict[str, float]:
    """Bare and synced steps/s, dispatch ms, and the host costs of data and batch assembly."""
    out = {}
    self.state, out['bare_steps_per_s'], out['dispatch_ms'] = _bare_steps_per_s(
      self.run, self.state, self.batch, self.key, steps
    )
    self.state, out['synced_steps_per_s'] = _synced_steps_per_s(
      self.run, self.state, self.batch, self.key, steps
    )
    out['loader_next_ms'] = _ms_per_call(lambda: next(self.iterator), steps)
    host = next(self.iterator)
    out['global_batch_ms'] = _ms_per_call(lambda: sharding.global_batch(host, self.run.mesh), steps)
    return out

  def close(self) -> None:
    if hasattr(self.iterator, 'close'):
      self.iterator.close()


# cProfile names the jitted call after JAX's traceback-filtering wrapper.
_LABELS = {
  'reraise_with_filtered_traceback': (
    'jitted train_step call (includes the first call: trace + compile)'
  )
}


def _callees(profile: cProfile.Profile, caller: str, steps: int) -> list[tuple[str, float]]:
  """(function, cumulative ms per step) of each function `caller` calls directly."""
  stats = pstats.Stats(profile).stats  # pylint: disable=no-member
  out = []
  for (path, line, name), (_, _, _, _, callers) in stats.items():
    for (c_path, _, c_name), (_, _, _, cum) in callers.items():
      if c_name == caller and c_path.endswith('loop.py'):
        label = _LABELS.get(name, f'{name} ({os.path.basename(path)}:{line})')
        out.append((label, 1e3 * cum / steps))
  return sorted(out, key=lambda x: -x[1])


def in_memory_loader(batches: list[dict]) -> Callable[..., grain.DatasetIterator]:
  """A stand-in for `loader.train_iterator` that cycles `batches` (host batches) at no cost."""

  def train_iterator(*args, **kwargs) -> grain.DatasetIterator:
    del args, kwargs
    ds = grain.MapDataset.source(batches).repeat(None)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  return train_iterator


def profile_loop(config, workdir: str, caller: str = 'train_loop') -> list[tuple[str, float]]:
  """cProfile of one `train_and_evaluate`: what `caller` spends per step in each callee."""
  prof = cProfile.Profile()
  prof.enable()
  try:
    loop.train_and_evaluate(config, workdir)
  finally:
    prof.disable()
  return _callees(prof, caller, config.train.max_steps)


def measure(config: ml_collections.ConfigDict, *, profile: bool = True) -> dict[str, Any]:
  """Loop vs bare step for a config from `loop_config`. See the module docstring."""
  steps = config.train.max_steps
  with tempfile.TemporaryDirectory(prefix='jaxcxr_loop_bench_') as tmp:
    bare = BareStep(config, os.path.join(tmp, 'bare'))
    if bare.run.steps_per_epoch <= steps:
      raise ValueError(
        f'steps_per_epoch={bare.run.steps_per_epoch} <= steps={steps}: epoch ends '
        'would fall inside the timed steps.'
      )
    try:
      first = bare.measure(steps)
      t = time.perf_counter()
      loop.train_and_evaluate(config, os.path.join(tmp, 'loop'))
      run_s = time.perf_counter() - t
      rates = window_rates(os.path.join(tmp, 'loop'), config.train.batch_size)
      batches = [next(bare.iterator) for _ in range(8)]
      with mock.patch.object(loader, 'train_iterator', in_memory_loader(batches)):
        loop.train_and_evaluate(config, os.path.join(tmp, 'loop_memory'))
      memory_rates = window_rates(os.path.join(tmp, 'loop_memory'), config.train.batch_size)
      second = bare.measure(steps)
    finally:
      bare.close()
    callees = profile_loop(config, os.path.join(tmp, 'profiled')) if profile else []
  both = {k: (first[k] + second[k]) / 2 for k in first}
  loop_rate = statistics.median(rates)
  memory_rate = statistics.median(memory_rates)
  return {
    'model': config.model.name,
    'image_size': config.data.image_size,
    'batch': config.train.batch_size,
    'num_workers': config.data.num_workers,
    'steps': steps,
    'log_every': config.train.log_every_steps,
    **both,
    'bare_step_ms': 1e3 / both['bare_steps_per_s'],
    'bare_samples': [first['bare_steps_per_s'], second['bare_steps_per_s']],
    'loop_steps_per_s': loop_rate,
    'loop_window_steps_per_s': rates,
    'loop_run_s': run_s,
    'loop_memory_steps_per_s': memory_rate,
    'loop_memory_window_steps_per_s': memory_rates,
    'overhead_with_pipeline_pct': 100.0 * (both['bare_steps_per_s'] / loop_rate - 1.0),
    'overhead_pct': 100.0 * (both['bare_steps_per_s'] / memory_rate - 1.0),
    'train_loop_callees_ms_per_step': callees,
  }


def format_report(r: dict) -> str:
  """Human-readable result; the last line is `loop overhead: N%`."""
  lines = [
    f'{r["model"]}, {r["image_size"]} px, batch {r["batch"]}, {r["num_workers"]} loader '
    f'workers, {r["steps"]} steps ({r["log_every"]}-step windows)',
    f'  bare jitted step:        {r["bare_steps_per_s"]:8.1f} steps/s ({r["bare_step_ms"]:.2f} ms;'
    f' samples {", ".join(f"{x:.1f}" for x in r["bare_samples"])})',
    f'  train_and_evaluate loop: {r["loop_steps_per_s"]:8.1f} steps/s (median window; windows '
    f'{min(r["loop_window_steps_per_s"]):.1f}-{max(r["loop_window_steps_per_s"]):.1f})',
    f'  the loop, in-memory batches: {r["loop_memory_steps_per_s"]:8.1f} steps/s (median window; '
    f'windows {min(r["loop_memory_window_steps_per_s"]):.1f}-'
    f'{max(r["loop_memory_window_steps_per_s"]):.1f})',
    'where the time goes (host side, ms per step):',
    f'  loader next() alone:        {r["loader_next_ms"]:.3f}',
    f'  sharding.global_batch:      {r["global_batch_ms"]:.3f}',
    f'  jitted call dispatch:       {r["dispatch_ms"]:.3f}',
    f'  bare step + per-step host read of the previous metrics: '
    f'{1e3 / r["synced_steps_per_s"]:.3f} ms/step (bare {r["bare_step_ms"]:.3f})',
  ]
  if r.get('train_loop_callees_ms_per_step'):
    lines.append(
      '  cProfile, train_loop callees (cumulative ms per step, profiler overhead included):'
    )
    lines += [f'    {ms:8.3f}  {name}' for name, ms in r['train_loop_callees_ms_per_step'][:12]]
  if 'loadavg_before' in r:
    lines.append(
      f'load average {r["loadavg_before"]:.2f} -> {r["loadavg_after"]:.2f}; other '
      f'processes used {r["foreign_cores"] or 0:.2f} cores'
      + ('' if r.get('load_ok', True) else ' (UNDER LOAD: not a benchmark figure)')
    )
  lines.append(
    f'with the real data pipeline on the same cores: '
    f'{r["overhead_with_pipeline_pct"]:.0f}% (see the module docstring)'
  )
  lines.append(f'loop overhead: {r["overhead_pct"]:.0f}%')
  return '\n'.join(lines)


def run(
  config,
  *,
  allow_load: bool,
  max_load_per_core: float,
  max_foreign_per_core: float,
  settle_s: float,
  profile: bool = True,
) -> tuple[dict, str | None]:
  """`measure` between load checks. Returns (result, refusal message or None)."""
  limit = guard.max_load(max_load_per_core)
  quiet, load1, waited = guard.wait_until_quiet(limit, settle_s)
  if not quiet and not allow_load:
    return {}, guard.busy_message(
      [f'1-minute load average {load1:.2f} > {limit:.2f} after waiting {waited:.0f} s'],
      'loop overhead',
    )
  meter = guard.CpuMeter().start()
  result = measure(config, profile=profile)
  verdict = guard.judge(
    load1,
    os.getloadavg()[0],
    meter.stop(),
    limit=limit,
    foreign_limit=max_foreign_per_core * guard.cores(),
  )
  result.update(verdict.as_dict())
  if not verdict.ok and not allow_load:
    return result, guard.busy_message(verdict.problems, 'loop overhead')
  return result, None


def loop_main(
  config,
  *,
  steps: int,
  log_every: int,
  model: str,
  image_size: int,
  profile: bool,
  out: str,
  allow_load: bool,
  max_load_per_core: float,
  max_foreign_per_core: float,
  settle_s: float,
) -> int:
  """`launch.benchmark --loop`: prints the report (last line `loop overhead: N%`), writes JSON."""
  c = loop_config(config, steps=steps, log_every=log_every, model=model, image_size=image_size)
  result, refusal = run(
    c,
    allow_load=allow_load,
    max_load_per_core=max_load_per_core,
    max_foreign_per_core=max_foreign_per_core,
    settle_s=settle_s,
    profile=profile,
  )
  if result:
    benchmark.write_json(out, result)
  if refusal:
    print(refusal, file=sys.stderr)
    return guard.BUSY_EXIT
  print(format_report(result))
  return 0
