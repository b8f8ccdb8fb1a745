"""Fitting the OOD score of a workdir, and measuring it against out-of-distribution sets.

`fit_bundle` fits `jaxcxr.evaluation.ood` on a trained model's training split and thresholds it
on the validation split (`fit_and_evaluate` is `launch.fit_ood`; the end of `launch.train` fits
it too: `run_section` in the run's report, `ensure_fitted` for a run without a test split).
`evaluate` puts in-distribution films and OOD sets (`jaxcxr.data.ood_material`: generated
pictures, natural photos, transformed copies of the in-distribution films, any folders given)
through exactly what `launch.predict` does to a file (decode, input checks, resize, features)
and reports, per set, the AUROC of each score against the in-distribution films, and the false
alarms on the in-distribution films. `markdown` is the report section.
"""

import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from jaxcxr import data
from jaxcxr.data import dataset, input_checks, loader, ood_material, preprocess
from jaxcxr.data import images as images_lib
from jaxcxr.evaluation import inference, ood
from jaxcxr.training import checkpoint

Picture = bytes | np.ndarray  # a file's bytes, or uint8 pixels (H, W[, 3 or 4])

DEFAULT_PER_SET = 64
SCORES = ('mahalanobis', 'energy')


def split_features(
  feature_fn: Callable, data_cfg, handle, split: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """(outputs (N, D), labels (N,)) of every film of a split, eval mode, this process only."""
  outs, labels = [], []
  for batch in loader.eval_iterator(data_cfg, handle, split, local_batch_size=batch_size):
    valid = np.asarray(batch['valid'], bool)
    outs.append(np.asarray(feature_fn(batch['image']))[valid])
    labels.append(np.asarray(batch['label'])[valid])
  if not outs:
    raise ValueError(f'Split {split!r} yielded no films to fit the OOD score on.')
  return np.concatenate(outs), np.concatenate(labels)


def fit_bundle(
  bundle,
  handle,
  *,
  batch_size: int = 0,
  false_alarm: float = ood.DEFAULT_FALSE_ALARM,
  confidence: float = ood.DEFAULT_CONFIDENCE,
  which: str = 'best',
) -> ood.OodModel:
  """Fits the OOD score of a restored model on its run's train split, thresholds on validation."""
  cfg = bundle.config
  batch_size = batch_size or int(cfg.eval.batch_size)
  fn = ood.make_feature_fn(bundle.module, bundle.variables)
  train_out, train_labels = split_features(fn, cfg.data, handle, 'train', batch_size)
  val_out, _ = split_features(fn, cfg.data, handle, 'validation', batch_size)
  meta = {
    'checkpoint': which,
    'step': int(bundle.step),
    'model': cfg.model.name,
    'image_size': int(bundle.image_size),
  }
  return ood.fit(
    train_out,
    train_labels,
    val_out,
    num_classes=len(bundle.class_names),
    false_alarm=false_alarm,
    confidence=confidence,
    meta=meta,
  )


def _as_bytes(picture: Picture) -> bytes:
  return picture if isinstance(picture, bytes) else input_checks.encode_png(picture)


def score_pictures(
  feature_fn: Callable,
  model: ood.OodModel,
  pictures: Sequence[Picture],
  *,
  image_size: int,
  stored_size: int,
  batch_size: int,
  thresholds: input_checks.Thresholds = input_checks.DEFAULT_THRESHOLDS,
) -> dict:
  """Decode, input checks and both scores of each picture, as `launch.predict` sees a file.

  Returns:
    {'reasons': [[check names]] per scored picture, 'greys': [uint8 (H, W)], 'mahalanobis': (N,),
     'energy': (N,), 'skipped': [reason] of the pictures that do not decode (not scored)}.
  """
  reasons, greys, inputs, skipped = [], [], [], []
  for i, picture in enumerate(pictures):
    try:
      ins = input_checks.inspect_bytes(
        _as_bytes(picture), name=f'picture {i}', image_size=image_size, thresholds=thresholds
      )
    except images_lib.ImageError as e:  # an unreadable file of a folder: listed, not scored
      skipped.append(e.reason)
      continue
    reasons.append(ins.reasons)
    greys.append(ins.grey)
    inputs.append(preprocess.prepare_grey(ins.grey, image_size, stored_size))
  outputs = inference.predict_arrays(feature_fn, np.stack(inputs), batch_size) if inputs else None
  return scored(model, reasons, greys, outputs, skipped)


def scored(
  model: ood.OodModel,
  reasons: list[list[str]],
  greys: list[np.ndarray],
  outputs: np.ndarray | None,
  skipped: Sequence[str] = (),
) -> dict:
  """`score_pictures`' result from pictures already decoded, checked and run through the model.

  Args:
    model: the fitted score.
    reasons: input check names per picture; greys: its decoded uint8 (H, W) pixels.
    outputs: (N, C + K) `ood.make_feature_fn` / `inference.make_outputs_fn` outputs, or None
      when there are no pictures.
    skipped: reasons of the pictures that did not decode.
  """
  scores = (
    ood.score(model, outputs)
    if outputs is not None and len(outputs)
    else {'mahalanobis': np.zeros(0), 'energy': np.zeros(0)}
  )
  return {
    'reasons': reasons,
    'greys': greys,
    'mahalanobis': scores['mahalanobis'],
    'energy': scores['energy'],
    'skipped': list(skipped),
  }


def _auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  if not len(in_scores) or not len(out_scores):
    return float('nan')
  y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
  return float(skm.roc_auc_score(y, np.r_[in_scores, out_scores]))


def _with_checks(scores: np.ndarray, flagged: np.ndarray, top: float) -> np.ndarray:
  """Scores with input-check-flagged pictures ranked above everything (they are rejected)."""
  return np.where(flagged, top + 1.0, scores)


def material_films(n: int, per_set: int, seed: int) -> list[int]:
  """Sorted indices of the min(per_set, n) in-distribution films whose transformed copies are the
  'transformed X-rays' sets (a caller may keep only these at source resolution)."""
  rng = np.random.default_rng(seed)
  return sorted(rng.choice(n, min(per_set, n), replace=False).tolist())


def material_sets(
  in_greys: Sequence[np.ndarray], *, per_set: int, size: int, seed: int, phantom_model: bool
) -> dict[str, tuple[str, list[Picture]]]:
  """{name: (kind, pictures)}: the generated sets and transformed in-distribution films.

  Phantom radiographs are left out for a model trained on them. Sets whose source is not
  installed (photos, mri) are left out.
  """
  sets = {}
  for kind in ood_material.GENERATED:
    if kind == 'phantom' and phantom_model:
      continue
    pictures = ood_material.generated(kind, per_set, size, seed)
    if pictures:
      sets[kind] = ('generated', pictures)
  chosen = [in_greys[i] for i in material_films(len(in_greys), per_set, seed)]
  for kind in ood_material.TRANSFORMS:
    sets[kind] = ('transformed X-rays', ood_material.transformed(kind, chosen, seed))
  return sets


def evaluate(
  bundle,
  model: ood.OodModel,
  in_pictures: Sequence[Picture],
  *,
  in_name: str,
  inside: dict | None = None,
  extra_sets: dict[str, Sequence[Picture]] | None = None,
  per_set: int = DEFAULT_PER_SET,
  seed: int = 0,
  batch_size: int = 0,
  material_size: int = 224,
) -> dict:
  """The OOD section's numbers: false alarms on in-distribution films, AUROC per OOD set.

  Args:
    bundle: `checkpoint.restore_for_inference(...)`.
    model: the fitted score of that checkpoint.
    in_pictures: in-distribution films (file bytes or uint8 pixels).
    in_name: what they are (e.g. 'test split' or a folder).
    inside: the in-distribution films already read and run through the model (`scored(...)`:
      one read and forward pass shared with the prediction); `in_pictures` is then unused.
    extra_sets: further OOD sets {name: pictures} (e.g. another data set's films).
    per_set: pictures per generated set, and films per transformed set.
    seed: material seed.
    batch_size: 0 = config.eval.batch_size.
    material_size: side of the generated pictures before the model's resize.

  Returns:
    A JSON-able dict: 'in_distribution' (n, false alarm rates, check reasons), 'sets' (per set:
    name, kind, n, share flagged by the checks, AUROC of each score alone and with the checks,
    share flagged at the thresholds), 'threshold', 'energy_threshold', 'rule', 'features'.
  """
  cfg = bundle.config
  batch_size = batch_size or int(cfg.eval.batch_size)
  fn = ood.make_feature_fn(bundle.module, bundle.variables)

  def run(pictures):
    return score_pictures(
      fn,
      model,
      pictures,
      image_size=int(bundle.image_size),
      stored_size=dataset.stored_size(cfg.data),
      batch_size=batch_size,
    )

  inside = inside if inside is not None else run(in_pictures)
  in_flagged = np.array([bool(r) for r in inside['reasons']], bool)
  sets = material_sets(
    inside['greys'],
    per_set=per_set,
    size=material_size,
    seed=seed,
    phantom_model=cfg.data.source == 'phantom',
  )
  for name, pictures in (extra_sets or {}).items():
    sets[name] = ('folder', list(pictures))
  thresholds = {'mahalanobis': model.threshold, 'energy': model.energy_threshold}
  rows = []
  for name, (kind, pictures) in sets.items():
    out = run(pictures)
    flagged = np.array([bool(r) for r in out['reasons']], bool)
    row = {
      'name': name,
      'kind': kind,
      'n': len(out['reasons']),
      'unreadable': len(out['skipped']),
      'checks': float(flagged.mean()) if len(flagged) else float('nan'),
      'auroc': {},
      'flagged': {},
    }
    for s in SCORES:
      top = float(max(inside[s].max(initial=0.0), out[s].max(initial=0.0)))
      row['auroc'][s] = _auroc(inside[s], out[s])
      row['auroc'][f'{s}_with_checks'] = _auroc(
        _with_checks(inside[s], in_flagged, top), _with_checks(out[s], flagged, top)
      )
      row['flagged'][s] = float(np.mean(flagged | (out[s] > thresholds[s])))
    rows.append(row)
  reasons = {}
  for r in inside['reasons']:
    for name in r:
      reasons[name] = reasons.get(name, 0) + 1
  false_alarm = {'checks': float(in_flagged.mean())}
  for s in SCORES:
    false_alarm[f'{s}_alone'] = float(np.mean(inside[s] > thresholds[s]))
    false_alarm[s] = float(np.mean(in_flagged | (inside[s] > thresholds[s])))
  return {
    'in_distribution': {
      'name': in_name,
      'n': len(inside['reasons']),
      'unreadable': len(inside['skipped']),
      'false_alarm': false_alarm,
      'check_reasons': reasons,
    },
    'sets': rows,
    'threshold': model.threshold,
    'energy_threshold': model.energy_threshold,
    'rule': model.meta.get('rule', ''),
    'features': model.meta.get('features', ''),
    'step': model.meta.get('step'),
    'per_set': per_set,
    'seed': seed,
  }


def restore_shipped(workdir: str):
  """(bundle, which) of the checkpoint a run ships: best/, or the latest when none was kept."""
  try:
    return checkpoint.restore_for_inference(workdir, which='best'), 'best'
  except FileNotFoundError:
    return checkpoint.restore_for_inference(workdir, which='latest'), 'latest'


def ensure_fitted(workdir: str, step: int | None = None) -> str:
  """Fits the OOD score of the checkpoint a run ships unless it has one (the end of a run
  without a test split, which writes no report). Returns a line saying what it did ('' if
  nothing). `step`: the shipped step when known (a score fitted on it skips the restore)."""
  saved = ood.load(workdir)
  if step is not None and saved is not None and saved.meta.get('step') == step:
    return ''
  bundle, which = restore_shipped(workdir)
  if ood.load_for(workdir, bundle)[0] is not None:
    return ''
  try:
    model = fit_bundle(bundle, data.prepare(bundle.config.data), which=which)
  except (ValueError, np.linalg.LinAlgError) as e:
    return f'Out-of-distribution score not fitted: {e}'
  path = ood.save(model, workdir)
  return (
    f'Out-of-distribution score fitted on the {which} checkpoint (step {bundle.step}; '
    f'threshold {model.threshold:.3f}, {model.meta["rule"]}): {path}'
  )


def split_pictures(handle, data_cfg, split: str) -> list[Picture]:
  """A split's films as `launch.predict` would read them: the source files' bytes where they are
  still readable (phantom folder or `data.manual_dir`), else the stored records' pixels."""
  root = handle.phantom_dir or data_cfg.get('manual_dir', '')
  source = handle.source(split)
  out = []
  for i, name in enumerate(handle.filenames(split)):
    if root:
      try:
        with open(os.path.join(os.path.expanduser(root), name), 'rb') as f:
          out.append(f.read())
        continue
      except OSError:
        pass
    image = np.asarray(source[i]['image'])
    out.append(image[..., 0] if image.ndim == 3 else image)
  return out


def run_section(
  workdir: str,
  bundle,
  handle,
  split: str,
  *,
  which: str = 'best',
  per_set: int = DEFAULT_PER_SET,
  refit: bool = True,
) -> dict:
  """The OOD section of a run's report: fits (and saves) the score, evaluates it on `split`.

  In-distribution films: `split` of the run's data (the test split at the end of training).
  Generated sets hold min(`per_set`, max(16, films in the split)) pictures, drawn at twice the
  model's input side (at most 224 px).

  Returns:
    `evaluate(...)`, or {'error': why} when the score cannot be fitted (e.g. an empty
    validation split); the run's report says so instead of failing the run.
  """
  cfg = bundle.config
  try:
    model = None if refit else ood.load_for(workdir, bundle)[0]
    if model is None:
      model = fit_bundle(bundle, handle, which=which)
      ood.save(model, workdir)
    pictures = split_pictures(handle, cfg.data, split)
    size = min(224, 2 * int(bundle.image_size))
    return evaluate(
      bundle,
      model,
      pictures,
      in_name=f'{split} split',
      per_set=min(per_set, max(16, len(pictures))),
      material_size=size,
    )
  except (ValueError, np.linalg.LinAlgError) as e:
    return {'error': f'{type(e).__name__}: {e}'}


def _pct(x) -> str:
  return 'n/a' if x is None or math.isnan(x) else f'{100 * x:.1f} %'


def _auc(x) -> str:
  return 'n/a' if x is None or math.isnan(x) else f'{x:.3f}'


def markdown(result: dict) -> str:
  """The report section of `evaluate(...)` (or of `run_section`'s error)."""
  if 'error' in result:
    return '\n'.join(
      [
        '## Out-of-distribution inputs',
        '',
        f'The OOD score could not be fitted: {result["error"]}',
        '',
      ]
    )
  ind = result['in_distribution']
  fa = ind['false_alarm']
  reasons = ', '.join(f'{k} {v}' for k, v in sorted(ind['check_reasons'].items())) or 'none'
  lines = [
    '## Out-of-distribution inputs',
    '',
    'Would `launch.predict` say that an image is not like the training films? Input checks '
    '(colour, near-constant, aspect ratio, too small) first, then the feature score: '
    'Mahalanobis distance to the nearest class of the penultimate features '
    f'({result["features"]}; Lee et al. 2018), with the energy of the logits (Liu et al. 2020) '
    'beside it. docs/OOD.md has the method.',
    '',
    f'Thresholds: Mahalanobis {result["threshold"]:.3f}, energy '
    f'{result["energy_threshold"]:.3f}; {result["rule"]}.',
    '',
    f'In-distribution: {ind["n"]} films ({ind["name"]}). False alarms: '
    f'**{_pct(fa["mahalanobis"])}** with the Mahalanobis score ({_pct(fa["mahalanobis_alone"])}'
    f' from the score, {_pct(fa["checks"])} from the input checks: {reasons}); '
    f'{_pct(fa["energy"])} with the energy score.',
    '',
    '| OOD set | kind | n | input checks flag | AUROC Mahalanobis | AUROC energy | '
    'AUROC checks + Mahalanobis | AUROC checks + energy | flagged (Mahalanobis) | '
    'flagged (energy) |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in result['sets']:
    a = r['auroc']
    lines.append(
      f'| {r["name"]} | {r["kind"]} | {r["n"]} | {_pct(r["checks"])} | {_auc(a["mahalanobis"])} '
      f'| {_auc(a["energy"])} | {_auc(a["mahalanobis_with_checks"])} | '
      f'{_auc(a["energy_with_checks"])} | {_pct(r["flagged"]["mahalanobis"])} | '
      f'{_pct(r["flagged"]["energy"])} |'
    )
  lines += [
    '',
    'AUROC: of the score alone, then with the input checks (a flagged picture ranks '
    'above every score). Flagged: share of the set that `launch.predict` marks '
    '`in_distribution=false` (input checks or score above its threshold).',
    '',
  ]
  return '\n'.join(lines)


def _finite(x):
  """NaN -> None, recursively (strict JSON)."""
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if isinstance(x, float) and math.isnan(x):
    return None
  return x


def _read_folder(spec: str) -> list[bytes]:
  paths = inference.list_images(spec)
  if not paths:
    raise FileNotFoundError(
      f'No image files under {spec!r} (folders are searched recursively '
      f'for {", ".join(inference.IMAGE_EXTENSIONS)}, and DICOM files by content).'
    )
  out = []
  for path in paths:
    with open(path, 'rb') as f:
      out.append(f.read())
  return out


def fit_and_evaluate(
  workdir: str,
  *,
  which: str = 'best',
  refit: bool = False,
  false_alarm: float = ood.DEFAULT_FALSE_ALARM,
  confidence: float = ood.DEFAULT_CONFIDENCE,
  split: str = 'test',
  in_dir: str = '',
  ood_dirs: dict[str, str] | None = None,
  per_set: int = 200,
  seed: int = 0,
  out: str = '',
  batch_size: int = 0,
) -> dict:
  """`launch.fit_ood`: fits the workdir's OOD score if needed, then measures it.

  Args:
    workdir: trained workdir.
    which: 'best' or 'latest' checkpoint.
    refit: fit even when a score fitted on this checkpoint exists.
    false_alarm, confidence: the threshold rule (`ood.threshold_rank`), when fitting.
    split: in-distribution films: this split of the run's data (unless `in_dir`).
    in_dir: in-distribution films: every image under this folder instead (e.g. an external test
      set; it is only scored, nothing is tuned on it).
    ood_dirs: further OOD sets {name: folder}.
    per_set: pictures per generated set and films per transformed set.
    seed: material seed.
    out: report folder; '' = <workdir>/eval_ood.
    batch_size: 0 = config.eval.batch_size.

  Returns:
    {'result': `evaluate(...)`, 'fitted': whether it fitted now, 'out_dir', 'files'}.
  """
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  handle = None
  model = None if refit else ood.load_for(workdir, bundle)[0]
  fitted = model is None
  if fitted:
    handle = data.prepare(bundle.config.data)
    model = fit_bundle(
      bundle,
      handle,
      batch_size=batch_size,
      false_alarm=false_alarm,
      confidence=confidence,
      which=which,
    )
    ood.save(model, workdir)
  if in_dir:
    pictures, in_name = _read_folder(in_dir), in_dir
  else:
    handle = handle or data.prepare(bundle.config.data)
    pictures, in_name = split_pictures(handle, bundle.config.data, split), f'{split} split'
  extra = {name: _read_folder(folder) for name, folder in (ood_dirs or {}).items()}
  result = evaluate(
    bundle,
    model,
    pictures,
    in_name=in_name,
    extra_sets=extra,
    per_set=per_set,
    seed=seed,
    batch_size=batch_size,
  )
  out_dir = out or os.path.join(workdir, 'eval_ood')
  os.makedirs(out_dir, exist_ok=True)
  files = {
    'json': os.path.join(out_dir, 'ood_report.json'),
    'markdown': os.path.join(out_dir, 'ood_report.md'),
  }
  with open(files['json'], 'w') as f:
    json.dump(
      _finite(
        {
          'workdir': os.path.abspath(workdir),
          'checkpoint': which,
          'model_meta': model.meta,
          **result,
        }
      ),
      f,
      indent=2,
    )
  with open(files['markdown'], 'w') as f:
    f.write(
      f'# Out-of-distribution report: {workdir} ({which} checkpoint, step '
      f'{bundle.step})\n\n' + markdown(result)
    )
  return {'result': result, 'fitted': fitted, 'out_dir': out_dir, 'files': files}
