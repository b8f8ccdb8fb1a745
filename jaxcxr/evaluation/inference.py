"""Batched, jitted prediction: uint8 images -> class probabilities.

The same preprocessing as training and evaluation runs on the device (`to_model_input`), and every
batch has one static shape (the last is zero-padded), so a whole folder compiles once.
"""

import concurrent.futures
import csv
import dataclasses
import functools
import os
from collections.abc import Callable, Collection, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr import data
from jaxcxr.data import dataset, folders, input_checks, preprocess
from jaxcxr.data import images as images_lib
from jaxcxr.evaluation import export, ood
from jaxcxr.training import checkpoint, sharding, validation

# Film extensions; files with another or no extension count when they are DICOM (preamble).
IMAGE_EXTENSIONS = folders.IMAGE_EXTENSIONS
# The predicted and leaderboard label of a row flagged out of distribution, with --reject_ood.
REJECTED_LABEL = 'OUT_OF_DISTRIBUTION'
_INFERENCE_REMEDY = 'Check that it is a readable PNG/JPEG/BMP/TIFF/DICOM chest X-ray image.'


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


def make_outputs_fn(module, variables: dict, *, dtype=jnp.float32, tta: bool = False) -> Callable:
  """fn(images uint8 (B, S, S, 1)) -> (probabilities (B, C), OOD outputs (B, C + K)), jitted.

  One forward pass gives both: the probabilities of `make_predict_fn` (averaged over
  `preprocess.tta_views` when `tta`) and the outputs of `ood.make_feature_fn` (logits and pooled
  `cam_features` of the image itself: the identity view, whose rows are the input exactly).
  Arguments as `make_predict_fn`.
  """
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  views = preprocess.TTA_VIEWS if tta else (preprocess.IDENTITY_VIEW,)
  own = views.index(preprocess.IDENTITY_VIEW)

  @jax.jit
  def outputs(variables, images):
    b = images.shape[0]
    x = preprocess.tta_views(images, views) if tta else images
    logits, state = module.apply(
      variables, preprocess.to_model_input(x, dtype), train=False, mutable=['intermediates']
    )
    probs = preprocess.average_views(logits, len(views))
    mine = jax.tree.map(lambda a: a[own * b : (own + 1) * b], (logits, state['intermediates']))
    return probs, ood.outputs_of(*mine)

  return functools.partial(outputs, variables)


def predict_arrays(predict_fn: Callable, images: np.ndarray, batch_size: int):
  """`predict_fn` over uint8 (N, S, S, 1) images in fixed-size (zero-padded) batches.

  Returns:
    What `predict_fn` returns for a batch, each array cut to the real rows and concatenated:
    probabilities (N, C) for `make_predict_fn`, (probabilities, outputs) for `make_outputs_fn`.
  """
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], predict_fn(chunk)))
  if not out:
    return np.zeros((0, 0), np.float32)
  return jax.tree.map(lambda *a: np.concatenate(a), *out)


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


@dataclasses.dataclass
class Films:
  """Image files read once: what the model, the input checks and the OOD material need.

  Attributes:
    inputs: uint8 (N_ok, S, S, 1), as the model sees them (`preprocess.prepare_grey`).
    ok: int64 (N_ok,) indices into the paths of the readable files.
    failed: [(index, reason)] of the others.
    reasons: [[input check names]] per readable file (`jaxcxr.data.input_checks`).
    greys: {index: decoded uint8 (H, W) film} of the readable files named by `keep_greys`.
  """

  inputs: np.ndarray
  ok: np.ndarray
  failed: list[tuple[int, str]]
  reasons: list[list[str]]
  greys: dict[int, np.ndarray]


def read_films(
  paths: Sequence,
  image_size: int,
  *,
  stored_size: int = 0,
  max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
  thresholds: input_checks.Thresholds = input_checks.DEFAULT_THRESHOLDS,
  keep_greys: Collection[int] = (),
  threads: int = 0,
) -> Films:
  """Reads and decodes each file once (threads), runs the input checks, resizes for the model.

  Only the model-size films are kept, plus the decoded films of the indices in `keep_greys` (a
  folder of 2,500 x 3,000 DICOMs would not fit in memory at source resolution). Unreadable files
  are reported (`Films.failed`), not raised.
  """
  keep = frozenset(keep_greys)

  def one(i, path):
    try:
      ins = input_checks.inspect_file(
        path,
        image_size=image_size,
        thresholds=thresholds,
        max_pixels=max_pixels,
        remedy=_INFERENCE_REMEDY,
      )
    except (OSError, ValueError) as e:  # ImageError is a ValueError naming the file
      return None, getattr(e, 'reason', None) or f'{type(e).__name__}: {e}', None
    prepared = preprocess.prepare_grey(ins.grey, image_size, stored_size)
    return prepared, ins.reasons, ins.grey if i in keep else None

  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
    results = list(pool.map(one, range(len(paths)), paths))
  ok = [i for i, (prepared, _, _) in enumerate(results) if prepared is not None]
  return Films(
    inputs=(
      np.stack([results[i][0] for i in ok])
      if ok
      else np.zeros((0, image_size, image_size, 1), np.uint8)
    ),
    ok=np.asarray(ok, np.int64),
    failed=[(i, reason) for i, (prepared, reason, _) in enumerate(results) if prepared is None],
    reasons=[results[i][1] for i in ok],
    greys={i: results[i][2] for i in ok if results[i][2] is not None},
  )


def predict_files_checked(
  predict_fn: Callable,
  paths: Sequence[str],
  image_size: int,
  batch_size: int,
  *,
  stored_size: int = 0,
  thresholds: input_checks.Thresholds = input_checks.DEFAULT_THRESHOLDS,
) -> dict:
  """`predict_files` plus the input checks and (with `make_outputs_fn`) the OOD outputs.

  Each file is read and decoded once (`read_films`, a few batches at a time): the checks see its
  own colours and size (`jaxcxr.data.input_checks`), the model its grey pixels.

  Args:
    predict_fn: `make_predict_fn(...)`, or `make_outputs_fn(...)` for the OOD outputs of the same
      forward pass.
    paths, image_size, batch_size, stored_size: as `predict_files`.
    thresholds: where the input checks flag.

  Returns:
    {'probs': float32 (N_ok, C), 'files': ok paths, 'failed': [(path, reason)], 'reasons':
     [[input check names]] per ok file, 'features': (N_ok, C + K) outputs, or None}.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  files, failed, reasons, probs, features = [], [], [], [], []
  step = batch_size * max(1, 64 // batch_size)  # files decoded at a time (bounded memory)
  for start in range(0, len(paths), step):
    chunk = list(paths[start : start + step])
    films = read_films(chunk, image_size, stored_size=stored_size, thresholds=thresholds)
    failed += [(str(chunk[i]), reason) for i, reason in films.failed]
    if not len(films.ok):
      continue
    files += [str(chunk[i]) for i in films.ok]
    reasons += films.reasons
    out = predict_arrays(predict_fn, films.inputs, batch_size)
    if isinstance(out, tuple):
      out, outputs = out
      features.append(outputs)
    probs.append(out)
  return {
    'probs': (np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, 0), np.float32)),
    'files': files,
    'failed': failed,
    'reasons': reasons,
    'features': np.concatenate(features) if features else None,
  }


def list_images(spec: str) -> list[str]:
  """Films of a folder (recursive: study / series / instance exports too, sorted), a glob pattern
  (folders it matches searched the same way), or one file: `folders.list_films` (by extension, or
  by the DICOM preamble for files named by UID with no extension)."""
  return folders.list_films(spec)


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
  ood_model, ood_warning = ood.load_for(workdir, bundle)
  failed, true_labels, features = [], None, None
  if split:
    handle = data.prepare(cfg.data)
    mesh = sharding.make_mesh(jax.devices()[:1])
    predict = make_predict_fn(bundle.module, bundle.variables, tta=bundle.tta)
    labels, probs, index = validation.predict_split(
      predict, cfg.data, handle, split, local_batch_size=batch_size, mesh=mesh
    )
    if ood_model is not None:
      _, features, _ = validation.predict_split(
        ood.make_feature_fn(bundle.module, bundle.variables),
        cfg.data,
        handle,
        split,
        local_batch_size=batch_size,
        mesh=mesh,
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
    make = make_predict_fn if ood_model is None else make_outputs_fn  # one pass for both
    result = predict_files_checked(
      make(bundle.module, bundle.variables, tta=bundle.tta),
      paths,
      bundle.image_size,
      batch_size,
      stored_size=dataset.stored_size(cfg.data),
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
