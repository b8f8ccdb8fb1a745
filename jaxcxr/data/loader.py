"""Grain input pipelines: an infinite augmented training stream and padded eval batches.

Training (`train_iterator`), all of it a Grain `MapDataset` until the final prefetch, so the batch
at step k is a pure function of (data, config, seed, k) and does not depend on `num_workers`::

  source('train') -> EpochResampleMapDataset   epoch e: N draws from (seed, e), see sampling.py
                  -> random_map(TrainAugment)  per-record RNG from (aug seed, global position)
                  -> HostBlockMapDataset       this process's block of every global batch
                  -> batch(local_batch_size)   {'image': uint8 (B, S, S, 1), 'label': int32 (B,)}
                  -> to_iter_dataset -> mp_prefetch(num_workers)   (0 workers: in-process)

The returned `grain.DatasetIterator` has `get_state()` / `set_state()` and works with
`grain.checkpoint.CheckpointSave` / `CheckpointRestore` in Orbax.

Evaluation (`eval_iterator`): the split in source order, no augmentation, padded to whole global
batches; batches carry `valid` (False on padding) and `index` (position in the split, -1 on
padding; `handle.filenames(split)[index]` names the file).
"""

import math
from typing import Any

from absl import flags
import grain
import numpy as np

from jaxcxr.data import augment as augment_lib
from jaxcxr.data import images as images_lib
from jaxcxr.data import sampling
from jaxcxr.data.builder import DatasetHandle


class _TrainRecord(grain.transforms.Map):
  """TFDS record -> {'image': uint8 (H, W), 'label': int32}."""

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    return {'image': record['image'], 'label': np.int32(record['label'])}


class _EvalRecord(grain.transforms.Map):
  """Global position g -> eval example (zeros with valid=False past the end of the split)."""

  def __init__(self, source, image_size: int):
    self.source = source
    self.image_size = int(image_size)

  def map(self, g: int) -> dict[str, Any]:
    s = self.image_size
    if g >= len(self.source):
      return {'image': np.zeros((s, s, 1), np.uint8), 'label': np.int32(0),
              'valid': np.bool_(False), 'index': np.int32(-1)}
    r = self.source[int(g)]
    return {'image': images_lib.resize_grey(r['image'], s)[..., None],
            'label': np.int32(r['label']), 'valid': np.bool_(True), 'index': np.int32(g)}


def _check_batch(local_batch_size: int, process_index: int, process_count: int) -> None:
  if local_batch_size <= 0:
    raise ValueError(f'local_batch_size={local_batch_size} must be > 0.')
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')


def _ensure_flags_parsed() -> None:
  # Grain's mp_prefetch reads an absl flag (worker profiling); outside an absl app (tests,
  # notebooks, scripts) flags are unparsed and that read raises. Parsing no args keeps defaults.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _threads(data_cfg) -> int:
  # Decoding (zlib) and warping (cv2) release the GIL, so two threads per process overlap them.
  return int(data_cfg.get('read_threads', 2))


def augment_seed(seed: int) -> int:
  """The random_map seed derived from the training seed (uint32)."""
  return int(np.random.SeedSequence([int(seed), 0x5EED]).generate_state(1)[0])


def train_dataset(data_cfg, handle: DatasetHandle, *, local_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """The batched training `MapDataset` (infinite), before prefetching; see the module docstring."""
  _check_batch(local_batch_size, process_index, process_count)
  if seed < 0:
    raise ValueError(f'seed={seed} must be >= 0.')
  params = augment_lib.AugmentParams.from_config(data_cfg.augment)
  ds = grain.MapDataset.source(handle.source('train')).map(_TrainRecord())
  ds = sampling.EpochResampleMapDataset(ds, handle.labels('train'), handle.num_classes,
                                        mode=data_cfg.sampling, seed=int(seed))
  if params.enabled:
    ds = ds.random_map(augment_lib.TrainAugment(params, data_cfg.image_size),
                       seed=augment_seed(seed))
  else:
    ds = ds.map(augment_lib.Resize(data_cfg.image_size))
  ds = sampling.HostBlockMapDataset(ds, local_batch=local_batch_size, process_index=process_index,
                                    process_count=process_count)
  return ds.batch(local_batch_size, drop_remainder=True)


def train_iterator(data_cfg, handle: DatasetHandle, *, local_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Infinite iterator of {'image': uint8 (B, S, S, 1), 'label': int32 (B,)} training batches.

  Args:
    data_cfg: `config.data` (sampling, augment, image_size, num_workers, prefetch).
    handle: from `jaxcxr.data.prepare`.
    local_batch_size: B, this process's share of the global batch.
    seed: the run seed (epoch draws and augmentation derive from it).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).

  Returns:
    A `grain.DatasetIterator` (checkpointable). Close it (`it.close()`) when done if workers > 0.
  """
  ds = train_dataset(data_cfg, handle, local_batch_size=local_batch_size, seed=seed,
                     process_index=process_index, process_count=process_count)
  prefetch = max(1, int(data_cfg.prefetch))
  workers = int(data_cfg.num_workers)
  if workers < 0:
    raise ValueError(f'config.data.num_workers={workers} must be >= 0 (0 = in-process).')
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_threads(data_cfg),
                                               prefetch_buffer_size=prefetch))
  if workers > 0:
    _ensure_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                           per_worker_buffer_size=prefetch))
  return iter(it_ds)


def eval_iterator(data_cfg, handle: DatasetHandle, split: str, *, local_batch_size: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Finite, deterministic, unaugmented batches of `split`, padded to a static shape.

  Global batch k holds split positions [k G, (k + 1) G) (G = local_batch_size * process_count);
  process p gets the block [k G + p B, k G + (p + 1) B), so gathering the local batches in process
  order gives the split in source order. Every process yields the same number of batches.

  Returns:
    An iterable (each `iter()` starts over) of {'image': uint8 (B, S, S, 1), 'label': int32 (B,),
    'valid': bool (B,), 'index': int32 (B,)}.
  """
  _check_batch(local_batch_size, process_index, process_count)
  source = handle.source(split)
  global_batch = local_batch_size * process_count
  num_batches = math.ceil(len(source) / global_batch)
  ds = grain.MapDataset.range(num_batches * global_batch)
  ds = sampling.HostBlockMapDataset(ds, local_batch=local_batch_size, process_index=process_index,
                                    process_count=process_count)
  ds = ds.map(_EvalRecord(source, data_cfg.image_size)).batch(local_batch_size)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=_threads(data_cfg),
                                              prefetch_buffer_size=max(1, int(data_cfg.prefetch))))


def num_eval_batches(handle: DatasetHandle, split: str, global_batch_size: int) -> int:
  """Batches `eval_iterator` yields per process (ceil(num_examples / global batch))."""
  return math.ceil(handle.num_examples[split] / global_batch_size)


def steps_per_epoch(handle: DatasetHandle, global_batch_size: int) -> int:
  """ceil(num_train / global_batch_size)."""
  if global_batch_size <= 0:
    raise ValueError(f'global_batch_size={global_batch_size} must be > 0.')
  return math.ceil(handle.num_examples['train'] / global_batch_size)


def class_weights(handle: DatasetHandle) -> np.ndarray:
  """float32 (num_classes,) loss weights proportional to 1 / train count, mean 1 over train examples.

  w_c = N / (K_present * n_c) for classes present in train (0 for absent ones), so
  sum_c n_c w_c / N = 1.
  """
  counts = np.asarray(handle.class_counts['train'], np.float64)
  present = counts > 0
  w = np.zeros_like(counts)
  w[present] = counts.sum() / (present.sum() * counts[present])
  return w.astype(np.float32)

