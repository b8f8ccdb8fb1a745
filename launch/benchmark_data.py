r"""Loader throughput benchmark (not a test): images/s of the training pipeline and where time goes.

  python -m launch.benchmark_data --manual_dir=../shared/data/cxr_dev --image_size=224 \
      --workers=0,1,2 [--data_dir=/tmp/jaxcxr_bench] [--batch_size=64] [--num_batches=60]

Without --manual_dir it benchmarks phantom data. Prints
1. a per-image CPU-time breakdown (one thread): record read + parse, augmentation warp + LUT,
   batch stacking, and for reference the PNG decode that storing raw uint8 avoids;
2. end-to-end images/s of `train_iterator` (augmentation on) per worker count, after warm-up,
   with the CPU time all processes spent per image (wall-clock rates depend on other load);
3. host float32 normalisation vs uint8 transfer + on-device `to_model_input`.
"""

import os
import tempfile
import time

from absl import app
from absl import flags

from jaxcxr.data import preprocess
import numpy as np

from configs import base
from jaxcxr import data as data_lib
from jaxcxr.data import augment
from jaxcxr.data import images
from jaxcxr.data import loader

_MANUAL_DIR = flags.DEFINE_string('manual_dir', '', 'Kaggle-layout folder; empty = phantom data.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS data_dir (default: a folder in /tmp).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Model input side.')
_STORED_SIZE = flags.DEFINE_integer('stored_size', 0, 'Stored side (0 = image_size).')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Worker counts to time.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Local batch size.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 60, 'Timed batches per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches first (worker start-up).')
_THREADS = flags.DEFINE_integer('read_threads', 2, 'Threads per process (config read_threads).')


def _per_image_ms(fn, items) -> float:
  """CPU ms per item in this thread (robust to other load on the machine)."""
  t = time.thread_time()
  for x in items:
    fn(x)
  return (time.thread_time() - t) / len(items) * 1e3


def breakdown(d, handle, n: int = 300) -> list[tuple[str, float]]:
  """(stage, ms per image) measured in one thread."""
  src = handle.source('train')
  idx = list(range(min(n, len(src))))
  rows = [('read + TFDS decode (handle.source[i])', _per_image_ms(lambda i: src[i], idx))]
  fast = loader.RecordSource(handle, 'train')
  rows.append(('read + fast parse (loader.RecordSource[i])', _per_image_ms(lambda i: fast[i], idx)))
  recs = [src[i]['image'] for i in idx]
  aug = augment.TrainAugment(augment.AugmentParams.from_config(d.augment), d.image_size)
  rng = np.random.default_rng(0)
  rows.append(('augment: one warpAffine + LUT',
               _per_image_ms(lambda im: aug.random_map({'image': im, 'label': 0}, rng), recs)))
  outs = [aug.random_map({'image': im, 'label': 0}, rng)['image'] for im in recs]
  b = _BATCH.value
  t = time.thread_time()
  for k in range(0, len(outs) - b + 1, b):
    np.stack(outs[k:k + b])
  rows.append(('batch: np.stack', (time.thread_time() - t) / max(1, (len(outs) // b) * b) * 1e3))
  if handle.phantom_dir is None and d.manual_dir:
    files = [os.path.join(d.manual_dir, f) for f in handle.filenames('train')[:len(idx)]]
    rows.append(('(reference) PNG file decode, not in the loop',
                 _per_image_ms(lambda p: images.load_grey(p), files)))
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
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def throughput(d, handle, workers: int) -> tuple[float, float, float]:
  """(images/s, CPU ms per image over all processes, seconds to first batch)."""
  d.num_workers = workers
  t0 = time.perf_counter()
  it = loader.train_iterator(d, handle, local_batch_size=_BATCH.value, seed=0)
  next(it)
  first = time.perf_counter() - t0
  for _ in range(_WARMUP.value):
    next(it)
  t, c = time.perf_counter(), _cpu_seconds()
  for _ in range(_NUM_BATCHES.value):
    next(it)
  n = _NUM_BATCHES.value * _BATCH.value
  rate = n / (time.perf_counter() - t)
  cpu_ms = (_cpu_seconds() - c) / n * 1e3
  it.close()
  return rate, cpu_ms, first


def normalisation(d) -> list[tuple[str, float]]:
  """ms per batch: host float32 normalise + transfer vs uint8 transfer + on-device normalise."""
  import jax  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).integers(0, 256, (_BATCH.value, d.image_size, d.image_size, 1),
                                        dtype=np.uint8)
  dev = jax.jit(preprocess.to_model_input)
  dev(jax.device_put(x)).block_until_ready()

  def host():
    return jax.device_put(preprocess.to_model_input_np(x)).block_until_ready()

  def device():
    return dev(jax.device_put(x)).block_until_ready()

  out = []
  for name, fn in (('host float32 normalise + device_put (4 B/px x3)', host),
                   ('device_put uint8 (1 B/px) + jit to_model_input', device)):
    fn()
    t = time.perf_counter()
    for _ in range(20):
      fn()
    out.append((f'{name} [{jax.devices()[0].platform}]', (time.perf_counter() - t) / 20 * 1e3))
  return out


def main(argv):
  del argv
  d = base.get_data_config()
  d.image_size = _IMAGE_SIZE.value
  d.stored_size = _STORED_SIZE.value
  d.read_threads = _THREADS.value
  d.data_dir = _DATA_DIR.value or os.path.join(tempfile.gettempdir(), 'jaxcxr_bench_tfds')
  if _MANUAL_DIR.value:
    d.source, d.manual_dir = 'folder', os.path.abspath(_MANUAL_DIR.value)
  else:
    d.source = 'phantom'
  t = time.perf_counter()
  handle = data_lib.prepare(d)
  print(f'prepare/reuse: {time.perf_counter() - t:.1f} s; {handle.num_examples} in '
        f'{handle.dataset_dir}; stored {handle.stored_size} px -> {d.image_size} px, '
        f'{os.cpu_count()} CPUs')
  print('\nPer-image CPU-time breakdown (1 thread, in-process):')
  for name, ms in breakdown(d, handle):
    print(f'  {name:<48} {ms:8.3f} ms/img  ({1e3 / ms:8.0f} img/s)')
  print(f'\nEnd-to-end train_iterator, augmentation on, batch {_BATCH.value}, '
        f'{d.read_threads} read threads per process:')
  cores = os.cpu_count() or 1
  print(f"  {'workers':>8} {'images/s':>10} {'CPU ms/img':>11} {'img/s if cores free':>20} "
        f"{'first batch s':>14}")
  for w in _WORKERS.value:
    rate, cpu_ms, first = throughput(d, handle, int(w))
    # What the measured CPU cost allows when the pipeline can use every core (workers > 0) or
    # the main process's threads (0 workers, ~1 core: the GIL serialises the Python parts).
    usable = min(cores, max(1, int(w)))
    print(f'  {w:>8} {rate:10.0f} {cpu_ms:11.3f} {usable * 1e3 / cpu_ms:20.0f} {first:14.2f}')
  print(f'  (load average during the run: {os.getloadavg()[0]:.1f} on {cores} cores; other '
        'processes on the machine share the cores)')
  print('\nNormalisation per batch (uint8 input):')
  for name, ms in normalisation(d):
    print(f'  {name:<60} {ms:8.2f} ms/batch')


if __name__ == '__main__':
  app.run(main)
