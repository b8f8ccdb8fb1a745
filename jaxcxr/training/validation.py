"""Predicting a whole split on the mesh, and the cheap per-epoch validation metrics.

The one `predict_split` of the code base: the training loop uses it every epoch, evaluation and
inference use it on a restored model. Each process reads its own block of every global batch
(`loader.eval_iterator`), keeps its own rows of the sharded output, and the processes exchange
their results once per split, not once per batch.
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from jaxcxr.data import loader
from jaxcxr.training import sharding


def _local_rows(x: jax.Array, mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array (all rows with one process)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(
    multihost_utils.global_array_to_host_local_array(x, mesh, P(sharding.DATA_AXIS))
  )


def _gather(local: np.ndarray) -> np.ndarray:
  """(num_batches, B_local, ...) of every process -> (num_batches * B_global, ...) in split
  order."""
  if jax.process_count() > 1:
    every = np.asarray(multihost_utils.process_allgather(local))  # (P, nb, B_local, ...)
    local = np.moveaxis(every, 0, 1)  # (nb, P, B_local, ...)
  return local.reshape((-1,) + local.shape[2:])


def predict_split(
  probs_fn: Callable[[jax.Array], jax.Array],
  data_cfg,
  handle,
  split: str,
  *,
  local_batch_size: int,
  mesh,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Labels, class probabilities and split indices of every example of `split`.

  Args:
    probs_fn: global uint8 images (B, S, S, 1), batch-sharded over `mesh` -> probabilities (B, C).
    data_cfg: `config.data` (image size, loader threads).
    handle: `jaxcxr.data.prepare(data_cfg)`.
    split: 'train', 'validation' or 'test'.
    local_batch_size: rows per process per batch (the last batch is padded, rows valid=False).
    mesh: the mesh of `sharding.make_mesh`.

  Returns:
    (labels int64 (N,), probs float64 (N, C), indices int64 (N,)) in split order; `indices` index
    `handle.filenames(split)`.
  """
  labels, probs, valid, index = [], [], [], []
  for batch in loader.eval_iterator(
    data_cfg,
    handle,
    split,
    local_batch_size=local_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  ):
    images = sharding.global_batch({'image': batch['image']}, mesh)['image']
    probs.append(_local_rows(probs_fn(images), mesh))
    labels.append(batch['label'])
    valid.append(batch['valid'])
    index.append(batch['index'])
  if not labels:
    raise ValueError(f'Split {split!r} yielded no examples.')
  keep = _gather(np.stack(valid)).astype(bool)
  return (
    _gather(np.stack(labels))[keep].astype(np.int64),
    _gather(np.stack(probs))[keep].astype(np.float64),
    _gather(np.stack(index))[keep].astype(np.int64),
  )


def epoch_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
  """Cheap per-epoch validation metrics (the full report comes from jaxcxr.evaluation.report)."""
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  pred = probs.argmax(-1)
  n = probs.shape[1]
  eps = 1e-12
  nll = float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + eps)))
  out = {
    f'{prefix}_loss': nll,
    f'{prefix}_accuracy': float(skm.accuracy_score(labels, pred)),
    f'{prefix}_macro_f1': float(
      skm.f1_score(labels, pred, labels=range(n), average='macro', zero_division=0)
    ),
  }
  try:
    out[f'{prefix}_macro_auc'] = float(
      skm.roc_auc_score(labels, probs, multi_class='ovr', labels=range(n))
    )
  except ValueError:  # a class absent from this split
    out[f'{prefix}_macro_auc'] = float('nan')
  return out
