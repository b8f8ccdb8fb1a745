"""Batched, jitted prediction: uint8 images -> class probabilities.

The same preprocessing as training and evaluation runs on the device (`to_model_input`), and every
batch has one static shape (the last is zero-padded), so a whole folder compiles once.
"""

import csv
import functools
import glob
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr import data
from jaxcxr.data import dataset, input_checks, preprocess
from jaxcxr.evaluation import export, ood
from jaxcxr.training import checkpoint, sharding, validation

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
# The predicted and leaderboard label of a row flagged out of distribution, with --reject_ood.
REJECTED_LABEL = 'OUT_OF_DISTRIBUTION'
_INFERENCE_REMEDY = 'Check that it is a readable PNG/JPEG/BMP/TIFF chest X-ray image.'


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
    chunk = images[start : start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(predict_fn(chunk))[:n])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_files(
  predict_fn: Callable,
  paths: Sequence[str],
  image_size: int,
  batch_size: int,
  *,
  stored_size: int = 0,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """Predicts image files; unreadable ones are skipped and reported.

  Args:
    predict_fn: `make_predict_fn(...)`.
    paths: image files, in output order.
    image_size: model input side.
    batch_size: static batch size (the last batch is zero-padded, so one compilation).
    stored_size: side the training data was stored at (`jaxcxr.data.dataset.stored_size`), to
      reproduce its two resamples; 0 resizes once.

  Returns:
    (probs float32 (N_ok, C), ok_paths (N_ok,), failed [(path, reason)]), ok_paths in the order
    of `paths`.
  """
  out = predict_files_checked(predict_fn, paths, image_size, batch_size, stored_size=stored_size)
  return out['probs'], out['files'], out['failed']


def predict_files_checked(
  predict_fn: Callable,
  paths: Sequence[str],
  image_size: int,
  batch_size: int,
  *,
  stored_size: int = 0,
  feature_fn: Callable | None = None,
  thresholds: input_checks.Thresholds = input_checks.DEFAULT_THRESHOLDS,
) -> dict:
  """`predict_files` plus the input checks and (optionally) the OOD features of every file.

  Each file is decoded once: the checks see its own colours and size
  (`jaxcxr.data.input_checks`), the model its grey pixels, exactly as `predict_files` does.

  Args:
    predict_fn, paths, image_size, batch_size, stored_size: as `predict_files`.
    feature_fn: `ood.make_feature_fn(...)`, run on the same batches; None = no features.
    thresholds: where the input checks flag.

  Returns:
    {'probs': float32 (N_ok, C), 'files': ok paths, 'failed': [(path, reason)], 'reasons':
     [[input check names]] per ok file, 'features': (N_ok, D) or None}.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  ok_paths, failed, reasons, probs, features = [], [], [], [], []
  pending = []

  def flush():
    if pending:
      batch = np.stack(pending)
      probs.append(predict_arrays(predict_fn, batch, batch_size))
      if feature_fn is not None:
        features.append(predict_arrays(feature_fn, batch, batch_size))
      pending.clear()

  for path in paths:
    try:
      ins = input_checks.inspect_file(
        path, image_size=image_size, thresholds=thresholds, remedy=_INFERENCE_REMEDY
      )
    except (OSError, ValueError) as e:  # ImageError is a ValueError naming the file
      failed.append((str(path), getattr(e, 'reason', None) or f'{type(e).__name__}: {e}'))
      continue
    pending.append(preprocess.prepare_grey(ins.grey, image_size, stored_size))
    ok_paths.append(str(path))
    reasons.append(ins.reasons)
    if len(pending) == batch_size:
      flush()
  flush()
  return {
    'probs': (np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, 0), np.float32)),
    'files': ok_paths,
    'failed': failed,
    'reasons': reasons,
    'features': np.concatenate(features) if features else None,
  }


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


def _ood_columns(
  model: ood.OodModel | None, reasons: Sequence[Sequence[str]], features: np.ndarray | None
) -> tuple[list[str], list[bool], list[str]]:
  """(ood_score strings, in_distribution, ood_reason) per row; see `predict_workdir`."""
  n = len(reasons)
  if model is None or features is None or not n:
    return [''] * n, [not r for r in reasons], [';'.join(r) for r in reasons]
  scores = ood.score(model, features)['mahalanobis']
  beyond = scores > model.threshold
  why = [list(r) + (['features'] if b else []) for r, b in zip(reasons, beyond, strict=True)]
  return [f'{v:.4f}' for v in scores], [not w for w in why], [';'.join(w) for w in why]


def _split_checks(
  handle, split: str, index: np.ndarray, image_size: int, thresholds: input_checks.Thresholds
) -> list[list[str]]:
  """Input checks of prepared records (grey, square, stored size): in effect near-constant only."""
  source = handle.source(split)
  out = []
  for i in index:
    grey = np.asarray(source[int(i)]['image'])
    grey = grey[..., 0] if grey.ndim == 3 else grey
    out.append(input_checks.check(grey, 0.0, image_size, thresholds)[0])
  return out


def predict_workdir(
  workdir: str,
  out: str,
  *,
  images: Sequence[str] = (),
  split: str = '',
  leaderboard_labels: bool = False,
  which: str = 'best',
  batch_size: int = 0,
  reject_ood: bool = False,
  thresholds: input_checks.Thresholds = input_checks.DEFAULT_THRESHOLDS,
) -> dict:
  """Predicts image files or a prepared split with a training workdir; writes a CSV.

  Columns: file, predicted_label, prob_<class> per class, then leaderboard_label (if asked),
  true_label (split only), and the out-of-distribution columns: ood_score (the fitted Mahalanobis
  score, `jaxcxr.evaluation.ood`; higher = less like the training films; empty when the workdir
  has no score fitted for this checkpoint), in_distribution ('true' / 'false') and ood_reason
  (empty, or the failed input checks of `jaxcxr.data.input_checks` and/or 'features' when the
  score is above its threshold, joined by ';'). Rows follow the input order (folders sorted by
  path).

  Args:
    workdir: training workdir.
    out: CSV path.
    images: folders (recursive), globs or files; exclusive with `split`.
    split: a prepared split of the workdir's data config.
    leaderboard_labels: add the `jaxcxr.evaluation.export.LEADERBOARD_LABELS` column.
    which: 'best' or 'latest' checkpoint.
    batch_size: 0 = config.eval.batch_size.
    reject_ood: rows with in_distribution=false get `REJECTED_LABEL` as predicted_label (and
      leaderboard_label); the probabilities stay.
    thresholds: where the input checks flag.

  Returns:
    {'rows': int, 'failed': [(path, reason)], 'out': out, 'ood_flagged': rows with
     in_distribution=false, 'ood_warning': '' or why ood_score is empty}.
  """
  if bool(images) == bool(split):
    raise ValueError('Give either --images (folders, globs or files) or --split, not both.')
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  cfg = bundle.config
  names = list(bundle.class_names)
  batch_size = batch_size or int(cfg.eval.batch_size)
  predict = make_predict_fn(bundle.module, bundle.variables, tta=bundle.tta)
  ood_model, ood_warning = ood.load_for(workdir, bundle)
  feature_fn = (
    ood.make_feature_fn(bundle.module, bundle.variables) if ood_model is not None else None
  )
  failed, true_labels, features = [], None, None
  if split:
    handle = data.prepare(cfg.data)
    mesh = sharding.make_mesh(jax.devices()[:1])
    labels, probs, index = validation.predict_split(
      predict, cfg.data, handle, split, local_batch_size=batch_size, mesh=mesh
    )
    if feature_fn is not None:
      _, features, _ = validation.predict_split(
        feature_fn, cfg.data, handle, split, local_batch_size=batch_size, mesh=mesh
      )
    filenames = handle.filenames(split)
    files = [filenames[i] for i in index]
    true_labels = [names[i] for i in labels]
    reasons = _split_checks(handle, split, index, int(bundle.image_size), thresholds)
  else:
    paths = []
    for spec in images:
      found = list_images(spec)
      if not found:
        failed.append((spec, 'no image files match'))
      paths += found
    result = predict_files_checked(
      predict,
      paths,
      bundle.image_size,
      batch_size,
      stored_size=dataset.stored_size(cfg.data),
      feature_fn=feature_fn,
      thresholds=thresholds,
    )
    probs, files, reasons, features = (
      result['probs'],
      result['files'],
      result['reasons'],
      result['features'],
    )
    failed += result['failed']
  scores, inside, why = _ood_columns(ood_model, reasons, features)
  preds = probs.argmax(axis=1) if len(files) else []
  header = ['file', 'predicted_label'] + [f'prob_{n}' for n in names]
  lb = export.to_leaderboard_labels(preds, names) if leaderboard_labels else None
  if lb is not None:
    header.append('leaderboard_label')
  if true_labels is not None:
    header.append('true_label')
  header += ['ood_score', 'in_distribution', 'ood_reason']
  with open(out, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for i, name in enumerate(files):
      rejected = reject_ood and not inside[i]
      row = [name, REJECTED_LABEL if rejected else names[preds[i]]]
      row += [f'{p:.6f}' for p in probs[i]]
      if lb is not None:
        row.append(REJECTED_LABEL if rejected else lb[i])
      if true_labels is not None:
        row.append(true_labels[i])
      row += [scores[i], 'true' if inside[i] else 'false', why[i]]
      writer.writerow(row)
  return {
    'rows': len(files),
    'failed': failed,
    'out': out,
    'ood_flagged': int(len(files) - sum(inside)),
    'ood_warning': ood_warning,
  }
