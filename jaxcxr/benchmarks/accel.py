"""Accelerator benchmark (issue #14 item 5): bf16 train / eval images/s at the largest batch that
fits.

For each architecture: batch sizes double from `start_batch` until a step runs out of device
memory (XLA's RESOURCE_EXHAUSTED, caught) or `max_batch`; then `bisect` halvings between the last
batch that fit and the first that did not. At the largest batch that fit: cold compile time of the
train step, median train and eval images/s over `steps` steps (after warm-up), next to published
PyTorch AMP training figures. Data parallel over every local device (the training mesh: batch
split, state replicated), donated state, the real `train_step` / `eval_step`.

Runs on CPU too, for smoke tests (`jaxcxr.benchmarks.accel.run(..., image_size=32)`): there
the search stops at `max_batch` unless memory really runs out.
"""

import functools
import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcxr import models
from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import compare as benchmark_compare
from jaxcxr.training import sharding
from jaxcxr.training import steps as steps_lib

# Published PyTorch AMP training throughput, img/s at 224 px (what the issue compares against).
PUBLISHED = {
  'resnet101': (748, 'timm, RTX 3090, AMP'),
  'densenet201': (563, 'timm, RTX 3090, AMP'),
  'vgg19': (457, 'timm, RTX 3090, AMP'),
  'resnet50': (2470, 'NVIDIA DeepLearningExamples, A100, AMP'),
}


def is_oom(error: BaseException) -> bool:
  """Whether an exception from compiling or running a step means device memory ran out."""
  text = str(error)
  return any(
    s in text
    for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory', 'Resource exhausted', 'OOM')
  )


def search_batch(
  fits: Callable[[int], Any], *, start: int, max_batch: int, multiple: int, bisect: int = 2
) -> tuple[int, Any, list[tuple[int, bool]]]:
  """The largest batch for which `fits(batch)` does not raise an out-of-memory error.

  Args:
    fits: runs a trial at a batch size; returns a result or raises (OOM errors are caught).
    start, max_batch: first and largest batch tried (doubling).
    multiple: every batch tried is a multiple of this (the device count).
    bisect: halvings of the gap between the last fit and the first OOM.

  Returns:
    (batch, fits(batch) result, [(batch, fitted)] of every trial).

  Raises:
    RuntimeError: not even `start` fits. Other exceptions from `fits` propagate.
  """

  def round_up(b):
    return max(multiple, -(-b // multiple) * multiple)

  trials, best, best_result, bad = [], None, None, None
  b = round_up(start)
  while b <= max_batch:
    try:
      result = fits(b)
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e):
        raise
      trials.append((b, False))
      bad = b
      break
    trials.append((b, True))
    best, best_result = b, result
    b = round_up(b * 2)
  if best is None:
    raise RuntimeError(
      f'batch {round_up(start)} does not fit in device memory: lower --start_batch or --image_size.'
    )
  for _ in range(bisect if bad is not None else 0):
    mid = round_up((best + bad) // 2)
    if mid <= best or mid >= bad:
      break
    try:
      result = fits(mid)
      trials.append((mid, True))
      best, best_result = mid, result
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e):
        raise
      trials.append((mid, False))
      bad = mid
  return best, best_result, trials


def _median_img_s(fn: Callable[[], Any], batch: int, steps: int) -> float:
  return batch / benchmark.median_seconds(fn, steps, warmup=2)


def trial(arch: str, batch: int, *, image_size: int, dtype, steps: int) -> dict[str, Any]:
  """Compiles and times one architecture (a `benchmark_compare.parse_spec` spec, e.g.
  'densenet201:scan8') at one global batch on all local devices."""
  mesh = sharding.make_mesh(jax.local_devices())
  name, overrides = benchmark_compare.parse_spec(arch)
  overrides, _ = benchmark_compare.split_options(overrides)  # XLA:CPU options: not on a GPU
  module = models.build(name, benchmark.NUM_CLASSES, dtype=dtype, **overrides)
  state = benchmark.make_state(module, image_size)
  state_sh = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  state = jax.device_put(state, state_sh)
  batch_data = jax.device_put(
    benchmark.random_batch(batch, image_size), sharding.batch_sharding(mesh)
  )
  key = jax.random.key(0)
  step = jax.jit(
    functools.partial(steps_lib.train_step, dtype=dtype, label_smoothing=0.0, class_weights=None),
    in_shardings=(state_sh, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
    out_shardings=(state_sh, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  t = time.perf_counter()
  compiled = step.lower(state, batch_data, key).compile()
  compile_s = time.perf_counter() - t
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch_data, key)
    return metrics

  train = _median_img_s(one_step, batch, steps)
  ev = (
    jax.jit(functools.partial(steps_lib.eval_step, dtype=dtype))
    .lower(holder[0], batch_data)
    .compile()
  )
  evaluate = _median_img_s(lambda: ev(holder[0], batch_data), batch, steps)
  return {
    'train_img_s': train,
    'eval_img_s': evaluate,
    'compile_s': compile_s,
    'train_temp_mb': benchmark.temp_mb(compiled),
  }


def _free() -> None:
  gc.collect()
  jax.clear_caches()


def bench(
  arch: str, *, image_size: int, dtype, steps: int, start_batch: int, max_batch: int, bisect: int
) -> dict[str, Any]:
  """`search_batch` over `trial` for one architecture; the row printed by `format_table`."""
  n = jax.local_device_count()

  def fits(b):
    try:
      return trial(arch, b, image_size=image_size, dtype=dtype, steps=steps)
    finally:
      _free()

  batch, result, trials = search_batch(
    fits, start=start_batch, max_batch=max_batch, multiple=n, bisect=bisect
  )
  row = {'arch': arch, 'batch': batch, 'trials': trials, **result}
  if arch in PUBLISHED:
    row['published_img_s'], row['published_source'] = PUBLISHED[arch]
    row['vs_published'] = row['train_img_s'] / row['published_img_s']
  return row


def run(
  archs: Sequence[str],
  *,
  image_size: int = 224,
  dtype: str = 'bfloat16',
  steps: int = 10,
  start_batch: int = 32,
  max_batch: int = 1024,
  bisect: int = 2,
  log=print,
) -> tuple[dict, list[dict]]:
  """Every architecture in turn. Returns (header, rows)."""
  dev = jax.local_devices()[0]
  header = {
    'device': f'{len(jax.local_devices())} x {dev.device_kind} ({dev.platform})',
    'jax': jax.__version__,
    'image_size': image_size,
    'dtype': dtype,
    'steps': steps,
  }
  log(f'{header["device"]}, jax {header["jax"]}, {dtype}, {image_size} px')
  rows = []
  for arch in archs:
    row = bench(
      arch,
      image_size=image_size,
      dtype=jnp.dtype(dtype),
      steps=steps,
      start_batch=start_batch,
      max_batch=max_batch,
      bisect=bisect,
    )
    log(
      f'{arch}: batch {row["batch"]} (tried {row["trials"]}): train {row["train_img_s"]:.1f}, '
      f'eval {row["eval_img_s"]:.1f} img/s, compile {row["compile_s"]:.1f} s'
    )
    rows.append(row)
  return header, rows


def format_table(header: dict, rows: Sequence[dict]) -> str:
  """Markdown table with the published PyTorch AMP figure beside each measured one."""
  lines = [
    f'{header["device"]}, jax {header["jax"]}, {header["dtype"]}, {header["image_size"]} '
    'px, median of {0} steps'.format(header['steps']),
    '',
    '| arch | largest batch | train img/s | eval img/s | train compile s | '
    'published PyTorch AMP train img/s | ours / published |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    pub = f'{r["published_img_s"]} ({r["published_source"]})' if 'published_img_s' in r else '-'
    ratio = f'{r["vs_published"]:.2f}x' if 'vs_published' in r else '-'
    lines.append(
      f'| {r["arch"]} | {r["batch"]} | {r["train_img_s"]:.1f} | {r["eval_img_s"]:.1f} | '
      f'{r["compile_s"]:.1f} | {pub} | {ratio} |'
    )
  return '\n'.join(lines)


def accel_main(
  archs: Sequence[str],
  *,
  image_size: int,
  dtype: str,
  steps: int,
  start_batch: int,
  max_batch: int,
  bisect: int,
  out: str,
) -> int:
  """`launch.benchmark --accelerator`: the table (and JSON). Returns the exit status."""
  header, rows = run(
    archs,
    image_size=image_size,
    dtype=dtype,
    steps=steps,
    start_batch=start_batch,
    max_batch=max_batch,
    bisect=bisect,
  )
  header['loadavg_end'] = os.getloadavg()
  print(format_table(header, rows))
  benchmark.write_json(out, {'header': header, 'rows': rows})
  return 0
