"""Batched, jitted prediction: uint8 images -> class probabilities.

The same preprocessing as training and evaluation runs on the device (`to_model_input`), and every
batch has one static shape (the last is zero-padded), so a whole folder compiles once.
"""

import csv
import functools
import glob
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr import data
from jaxcxr.data import builder
from jaxcxr.data import preprocess
from jaxcxr.evaluation import export
from jaxcxr.training import checkpoint
from jaxcxr.training import sharding
from jaxcxr.training import validation

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def make_predict_fn(module, variables: dict, *, dtype=jnp.float32, tta: bool = False) -> Callable:
  """fn(images uint8 (B, S, S, 1)) -> probabilities float32 (B, C), jitted.

  Args:
    module: the Flax module (`jaxcxr.models.build`).
    variables: {'params', 'batch_stats' (if any)}; other collections are dropped.
    dtype: model input dtype (`to_model_input`); the softmax is float32 whatever it is.
    tta: average the softmax over `preprocess.tta_views` (a run's `config.eval.tta`).
  """
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}

  @jax.jit
  def predict(variables, images):
    def logits(x):
      return module.apply(variables, preprocess.to_model_input(x, dtype), train=False)
    if tta:
      return preprocess.view_averaged_probs(logits, images)
    return jax.nn.softmax(logits(images).astype(jnp.float32), axis=-1)

  # Variables are an argument, not closed-over constants, so they are not baked into the HLO.
  return functools.partial(predict, variables)


def predict_arrays(predict_fn: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Probabilities of uint8 (N, S, S, 1) images in fixed-size (zero-padded) batches -> (N, C)."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(predict_fn(chunk))[:n])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_files(predict_fn: Callable, paths: Sequence[str], image_size: int,
                  batch_size: int, *, stored_size: int = 0
                  ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """Predicts image files; unreadable ones are skipped and reported.

  Args:
    predict_fn: `make_predict_fn(...)`.
    paths: image files, in output order.
    image_size: model input side.
    batch_size: static batch size (the last batch is zero-padded, so one compilation).
    stored_size: side the training data was stored at (`jaxcxr.data.builder.stored_size`), to
      reproduce its two resamples; 0 resizes once.

  Returns:
    (probs float32 (N_ok, C), ok_paths (N_ok,), failed [(path, reason)]), ok_paths in the order
    of `paths`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  ok_paths, failed, probs = [], [], []
  pending = []

  def flush():
    if pending:
      probs.append(predict_arrays(predict_fn, np.stack(pending), batch_size))
      pending.clear()

  for path in paths:
    try:
      image = preprocess.load_image_for_inference(path, image_size, stored_size=stored_size)
    except (OSError, ValueError) as e:  # ImageError is a ValueError naming the file
      failed.append((str(path), getattr(e, 'reason', None) or f'{type(e).__name__}: {e}'))
      continue
    pending.append(image)
    ok_paths.append(str(path))
    if len(pending) == batch_size:
      flush()
  flush()
  if not probs:
    return np.zeros((0, 0), np.float32), ok_paths, failed
  return np.concatenate(probs).astype(np.float32), ok_paths, failed


def list_images(spec: str) -> list[str]:
  """Image files of a folder (recursive, sorted), a glob pattern, or one file."""
  if os.path.isdir(spec):
    found = []
    for root, _, files in os.walk(spec):
      found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)
  if os.path.isfile(spec):
    return [spec]
  return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))


def predict_workdir(workdir: str, out: str, *, images: Sequence[str] = (), split: str = '',
                    leaderboard_labels: bool = False, which: str = 'best',
                    batch_size: int = 0) -> dict:
  """Predicts image files or a prepared split with a training workdir; writes a CSV.

  Columns: file, predicted_label, prob_<class> per class, then leaderboard_label (if asked) and
  true_label (split only). Rows follow the input order (folders sorted by path).

  Args:
    workdir: training workdir.
    out: CSV path.
    images: folders (recursive), globs or files; exclusive with `split`.
    split: a prepared split of the workdir's data config.
    leaderboard_labels: add the `jaxcxr.evaluation.export.LEADERBOARD_LABELS` column.
    which: 'best' or 'latest' checkpoint.
    batch_size: 0 = config.eval.batch_size.

  Returns:
    {'rows': int, 'failed': [(path, reason)], 'out': out}.
  """
  if bool(images) == bool(split):
    raise ValueError('Give either --images (folders, globs or files) or --split, not both.')
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  cfg = bundle.config
  names = list(bundle.class_names)
  batch_size = batch_size or int(cfg.eval.batch_size)
  predict = make_predict_fn(bundle.module, bundle.variables, tta=bundle.tta)
  failed, true_labels = [], None
  if split:
    handle = data.prepare(cfg.data)
    labels, probs, index = validation.predict_split(predict, cfg.data, handle, split,
                                                    local_batch_size=batch_size,
                                                    mesh=sharding.make_mesh(jax.devices()[:1]))
    filenames = handle.filenames(split)
    files = [filenames[i] for i in index]
    true_labels = [names[i] for i in labels]
  else:
    paths = []
    for spec in images:
      found = list_images(spec)
      if not found:
        failed.append((spec, 'no image files match'))
      paths += found
    probs, files, bad = predict_files(predict, paths, bundle.image_size, batch_size,
                                      stored_size=builder.stored_size(cfg.data))
    failed += bad
  preds = probs.argmax(axis=1) if len(files) else []
  header = ['file', 'predicted_label'] + [f'prob_{n}' for n in names]
  lb = export.to_leaderboard_labels(preds, names) if leaderboard_labels else None
  if lb is not None:
    header.append('leaderboard_label')
  if true_labels is not None:
    header.append('true_label')
  with open(out, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for i, name in enumerate(files):
      row = [name, names[preds[i]]] + [f'{p:.6f}' for p in probs[i]]
      if lb is not None:
        row.append(lb[i])
      if true_labels is not None:
        row.append(true_labels[i])
      writer.writerow(row)
  return {'rows': len(files), 'failed': failed, 'out': out}
