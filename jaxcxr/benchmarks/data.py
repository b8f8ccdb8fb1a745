"""Loader throughput: images/s of the training pipeline of a config, and where its time goes.

`data_main(config, workers=...)` prints
1. a per-image CPU-time breakdown (one thread): record read + parse, augmentation warp + LUT,
   batch stacking, and for reference the PNG decode that storing raw uint8 avoids;
2. end-to-end images/s of `loader.train_iterator` (augmentation as configured) per worker count,
   after warm-up, with the CPU time all processes spent per image (wall-clock rates depend on
   other load on the machine; CPU time per image much less so);
3. host float32 normalisation vs uint8 transfer + on-device `to_model_input`.
The batch is `config.train.batch_size`; everything else comes from `config.data`.
"""

import contextlib
import os
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from jaxcxr import data as data_lib
from jaxcxr.data import augment, images, loader, preprocess


def _per_image_ms(fn: Callable, items: Sequence) -> float:
  """CPU ms per item in this thread (robust to other load on the machine)."""
  t = time.thread_time()
  for x in items:
    fn(x)
  return (time.thread_time() - t) / len(items) * 1e3


def breakdown(
  d: ml_collections.ConfigDict, handle, batch: int, n: int = 300
) -> list[tuple[str, float]]:
  """(stage, CPU ms per image) measured in one thread on up to `n` training records."""
  src = handle.source('train')
  idx = list(range(min(n, len(src))))
  rows = [('read + TFDS decode (handle.source[i])', _per_image_ms(lambda i: src[i], idx))]
  fast = loader.RecordSource(handle, 'train')
  rows.append(('read + fast parse (loader.RecordSource[i])', _per_image_ms(lambda i: fast[i], idx)))
  recs = [src[i]['image'] for i in idx]
  aug = augment.TrainAugment(augment.AugmentParams.from_config(d.augment), d.image_size)
  rng = np.random.default_rng(0)
  rows.append(
    (
      'augment: one warpAffine + LUT',
      _per_image_ms(lambda im: aug.random_map({'image': im, 'label': 0}, rng), recs),
    )
  )
  outs = [aug.random_map({'image': im, 'label': 0}, rng)['image'] for im in recs]
  t = time.thread_time()
  stacked = 0
  for k in range(0, len(outs) - batch + 1, batch):
    np.stack(outs[k : k + batch])
    stacked += batch
  rows.append(('batch: np.stack', (time.thread_time() - t) / max(1, stacked) * 1e3))
  if handle.phantom_dir is None and d.manual_dir:
    files = [os.path.join(d.manual_dir, f) for f in handle.filenames('train')[: len(idx)]]
    rows.append(
      ('(reference) PNG file decode, not in the loop', _per_image_ms(images.load_grey, files))
    )
  return rows


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (Grain workers); needs psutil, else NaN."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
  except ImportError:
    return float('nan')
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    with contextlib.suppress(psutil.Error):
      total += sum(child.cpu_times()[:2])
  return total


def throughput(
  d: ml_collections.ConfigDict, handle, *, workers: int, batch: int, warmup: int, num_batches: int
) -> tuple[float, float, float]:
  """(images/s, CPU ms per image over all processes, seconds to the first batch)."""
  d = ml_collections.ConfigDict(d.to_dict())
  d.num_workers = workers
  t0 = time.perf_counter()
  it = loader.train_iterator(d, handle, local_batch_size=batch, seed=0)
  next(it)
  first = time.perf_counter() - t0
  for _ in range(warmup):
    next(it)
  t, c = time.perf_counter(), _cpu_seconds()
  for _ in range(num_batches):
    next(it)
  n = num_batches * batch
  rate = n / (time.perf_counter() - t)
  cpu_ms = (_cpu_seconds() - c) / n * 1e3  # 0.0 when under the clock's 10 ms tick
  if hasattr(it, 'close'):
    it.close()
  return rate, cpu_ms, first


def normalisation(
  d: ml_collections.ConfigDict, batch: int, repeats: int = 20
) -> list[tuple[str, float]]:
  """ms per batch: host float32 normalise + transfer vs uint8 transfer + on-device normalise."""
  x = np.random.default_rng(0).integers(
    0, 256, (batch, d.image_size, d.image_size, 1), dtype=np.uint8
  )
  dev = jax.jit(preprocess.to_model_input)
  dev(jax.device_put(x)).block_until_ready()

  def host():
    return jax.device_put(preprocess.to_model_input_np(x)).block_until_ready()

  def device():
    return dev(jax.device_put(x)).block_until_ready()

  out = []
  for name, fn in (
    ('host float32 normalise + device_put (4 B/px x3)', host),
    ('device_put uint8 (1 B/px) + jit to_model_input', device),
  ):
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
      fn()
    out.append((f'{name} [{jax.devices()[0].platform}]', (time.perf_counter() - t) / repeats * 1e3))
  return out


def throughput_row(workers: int, rate: float, cpu_ms: float, first: float, cores: int) -> str:
  """One row of the end-to-end table; the CPU columns are nan when the CPU time measured 0."""
  # What the measured CPU cost allows when the pipeline can use every core (workers > 0) or
  # the main process's threads (0 workers, ~1 core: the GIL serialises the Python parts).
  usable = min(cores, max(1, workers))
  # Process CPU time ticks in 10 ms steps: a short run can measure 0 (printed as nan).
  allowed = usable * 1e3 / cpu_ms if cpu_ms > 0 else float('nan')
  return f'  {workers:>8} {rate:10.0f} {cpu_ms:11.3f} {allowed:20.0f} {first:14.2f}'


def data_main(
  config: ml_collections.ConfigDict, *, workers: Sequence[int], num_batches: int, warmup: int
) -> int:
  """`launch.benchmark_data`: prints the three sections of the module docstring."""
  d = config.data
  batch = config.train.batch_size
  t = time.perf_counter()
  handle = data_lib.prepare(d)
  cores = os.cpu_count() or 1
  print(
    f'prepare/reuse: {time.perf_counter() - t:.1f} s; {handle.num_examples} in '
    f'{handle.dataset_dir}; stored {handle.stored_size} px -> {d.image_size} px, {cores} CPUs; '
    f'load average {os.getloadavg()[0]:.2f}'
  )
  print('\nPer-image CPU-time breakdown (1 thread, in-process):')
  for name, ms in breakdown(d, handle, batch):
    print(f'  {name:<48} {ms:8.3f} ms/img  ({1e3 / ms:8.0f} img/s)')
  print(
    f'\nEnd-to-end train_iterator, augmentation {"on" if d.augment.enabled else "off"}, '
    f'batch {batch}, {d.read_threads} read threads per process:'
  )
  print(
    f'  {"workers":>8} {"images/s":>10} {"CPU ms/img":>11} {"img/s if cores free":>20} '
    f'{"first batch s":>14}'
  )
  for w in workers:
    rate, cpu_ms, first = throughput(
      d, handle, workers=int(w), batch=batch, warmup=warmup, num_batches=num_batches
    )
    print(throughput_row(int(w), rate, cpu_ms, first, cores))
  print(
    f'  (load average after: {os.getloadavg()[0]:.2f} on {cores} cores; other processes on '
    'the machine share the cores)'
  )
  print('\nNormalisation per batch (uint8 input):')
  for name, ms in normalisation(d, batch):
    print(f'  {name:<60} {ms:8.2f} ms/batch')
  return 0
