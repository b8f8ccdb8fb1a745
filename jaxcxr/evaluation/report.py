"""The evaluation report of one split: report.json, report.md and figures.

`write_report` writes the files of one evaluation (`metrics.compute_metrics` gives the numbers,
`plots` draws the figures); `evaluate_workdir` evaluates a trained workdir's checkpoint
(`launch.evaluate`), and `write_run_report` is the report at the end of a training run.
"""

import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcxr import data
from jaxcxr.evaluation import gradcam, inference, ood_eval, plots
from jaxcxr.evaluation import ood as ood_lib
from jaxcxr.evaluation import robustness as robustness_lib
from jaxcxr.evaluation import shortcut as shortcut_lib
from jaxcxr.evaluation.metrics import check_inputs, compute_metrics
from jaxcxr.training import checkpoint, loop, run_log, sharding, validation


def _json_safe(x: Any) -> Any:
  """NaN/inf -> None (strict JSON), numpy -> Python."""
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.ndarray):
    return _json_safe(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _fmt(x: Any, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return 'n/a'
  return f'{x:.{digits}f}' if isinstance(x, float) else str(x)


def summary_table(metrics: dict) -> str:
  """Per-class and macro metrics as a Markdown table (also readable on a terminal).

  With bootstrap CIs, per-class precision / recall / specificity / F1 carry their 95% interval.
  """
  rows = [
    '| class | precision | recall (sens.) | specificity | F1 | ROC-AUC | support |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ]
  per_class_ci = (metrics.get('ci95') or {}).get('per_class')
  for c, (name, m) in enumerate(metrics['per_class'].items()):
    ci = per_class_ci[c] if per_class_ci else {}

    def cell(key, m=m, ci=ci):
      if key not in ci:
        return _fmt(m[key])
      lo, hi = ci[key]
      return f'{_fmt(m[key])} ({_fmt(lo, 3)}-{_fmt(hi, 3)})'

    rows.append(
      f'| {name} | {cell("precision")} | {cell("recall")} | {cell("specificity")} | '
      f'{cell("f1")} | {_fmt(m["auc"])} | {m["support"]} |'
    )
  m = metrics['macro']
  rows.append(
    f'| **macro** | {_fmt(m["precision"])} | {_fmt(m["recall"])} | '
    f'{_fmt(m["specificity"])} | {_fmt(m["f1"])} | {_fmt(m["auc"])} | '
    f'{metrics["num_examples"]} |'
  )
  return '\n'.join(rows)


def _markdown(
  metrics: dict,
  split: str,
  figures: dict,
  extra: dict | None,
  shortcut: dict | None = None,
  ood: dict | None = None,
  robustness: dict | None = None,
) -> str:
  names = metrics['class_names']
  ci = metrics.get('ci95')

  def with_ci(value, key):
    if not ci:
      return _fmt(value)
    lo, hi = ci[key]
    return f'{_fmt(value)} (95% CI {_fmt(lo)} - {_fmt(hi)})'

  lines = [
    f'# Evaluation report: {split} split',
    '',
    f'{metrics["num_examples"]} examples, classes: {", ".join(names)}.',
    '',
  ]
  if extra:
    selected = extra.get('selected')
    if selected:
      lines += [
        f'Checkpoint: epoch {selected["epoch"]} (step {selected["step"]}). {selected["why"]}',
        '',
      ]
    lines += (
      ['| run | |', '|---|---|']
      + [
        f'| {k} | {f"{v:.4g}" if isinstance(v, float) else v} |'
        for k, v in extra.items()
        if k != 'selected'
      ]
      + ['']
    )
  lines += [
    '## Summary',
    '',
    '| metric | value |',
    '|---|---|',
    f'| accuracy | {with_ci(metrics["accuracy"], "accuracy")} |',
    f'| macro F1 | {with_ci(metrics["macro"]["f1"], "macro_f1")} |',
    f'| macro ROC-AUC (one-vs-rest) | {with_ci(metrics["macro"]["auc"], "macro_auc")} |',
    f'| macro sensitivity | {_fmt(metrics["macro"]["recall"])} |',
    f'| macro specificity | {_fmt(metrics["macro"]["specificity"])} |',
    f'| expected calibration error ({metrics["calibration"]["n_bins"]} bins) | '
    f'{_fmt(metrics["calibration"]["ece"])} |',
    '',
  ]
  if ci:
    lines += [
      f'CIs: percentile bootstrap, {ci["n_bootstrap"]} resamples, seed {ci["seed"]}; '
      'per-class values in the table below carry theirs in brackets.',
      '',
    ]
  lines += [
    '## Per class',
    '',
    summary_table(metrics),
    '',
    '## Confusion matrix (rows: true, columns: predicted)',
    '',
    '| true \\ predicted | ' + ' | '.join(names) + ' |',
    '|---|' + '---:|' * len(names),
  ]
  for name, row in zip(names, metrics['confusion_matrix'], strict=True):
    lines.append(f'| {name} | ' + ' | '.join(str(v) for v in row) + ' |')
  lines.append('')
  if shortcut:
    lines += [
      shortcut_lib.markdown(shortcut['indicator'], shortcut['figures'], shortcut.get('cam_map', ''))
    ]
  if robustness:
    lines += [robustness_lib.markdown(robustness)]
  if ood:
    lines += [ood_eval.markdown(ood)]
  if metrics['notes']:
    lines += ['## Notes', ''] + [f'- {n}' for n in metrics['notes']] + ['']
  if figures:
    lines += ['## Figures', ''] + [f'![{k}]({v})' for k, v in figures.items()] + ['']
  return '\n'.join(lines)


def _draw_figures(out_dir, metrics, labels, probs, class_names, history, split) -> dict[str, str]:
  """The report's PNG figures in `out_dir`: {figure name: file name}."""
  figures = {
    'confusion_matrix': 'confusion_matrix.png',
    'roc_curves': 'roc_curves.png',
    'reliability_diagram': 'reliability_diagram.png',
  }
  plots.confusion_matrix(
    np.asarray(metrics['confusion_matrix']),
    class_names,
    os.path.join(out_dir, figures['confusion_matrix']),
    split=split,
  )
  plots.roc_curves(
    labels, probs, class_names, os.path.join(out_dir, figures['roc_curves']), split=split
  )
  plots.reliability_diagram(
    metrics['calibration'], os.path.join(out_dir, figures['reliability_diagram']), split=split
  )
  if history:
    figures['training_curves'] = 'training_curves.png'
    plots.training_curves(history, os.path.join(out_dir, figures['training_curves']))
  return figures


def write_report(
  out_dir: str,
  metrics: dict,
  labels,
  probs,
  class_names: Sequence[str],
  *,
  history: list[dict] | None = None,
  split: str = 'test',
  extra: dict | None = None,
  shortcut: dict | None = None,
  ood: dict | None = None,
  robustness: dict | None = None,
  figures: bool = True,
) -> dict[str, str]:
  """Writes report.json, report.md and the figures of one evaluation into `out_dir`.

  Args:
    out_dir: created if needed.
    metrics: `compute_metrics(labels, probs, class_names)`.
    labels: (N,) int labels, for the ROC curves.
    probs: (N, C) probabilities.
    class_names: C names.
    history: per-epoch dicts (`read_history`); adds training_curves.png when non-empty.
    split: name of the evaluated split (titles).
    extra: run facts for the report header (workdir, step, model, ...), JSON-able.
    shortcut: `shortcut.analyse_split(...)` (its panels already in `out_dir/shortcut/`), or None.
    ood: `ood_eval.evaluate(...)` / `ood_eval.run_section(...)` (the OOD section), or None.
    robustness: `robustness.evaluate(...)` (scores under non-lung perturbations), or None.
    figures: draw the PNG figures (confusion matrix, ROC curves, reliability diagram, training
      curves: ~1 s on a CPU); False writes report.json and report.md only.

  Returns:
    {file kind: path} of everything written.
  """
  os.makedirs(out_dir, exist_ok=True)
  labels, probs = check_inputs(labels, probs, class_names)
  class_names = list(class_names)
  drawn = (
    _draw_figures(out_dir, metrics, labels, probs, class_names, history, split) if figures else {}
  )
  report = {'split': split, 'extra': extra or {}, 'metrics': metrics, 'figures': drawn}
  if shortcut:
    report['shortcut'] = {
      'indicator': shortcut['indicator'],
      'figures': [p for _, p in shortcut['figures']],
      'cam_map': shortcut.get('cam_map', ''),
    }
  if robustness:
    report['robustness'] = robustness
  if ood:
    report['ood'] = ood
  with open(os.path.join(out_dir, 'report.json'), 'w') as f:
    json.dump(_json_safe(report), f, indent=2)
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(_markdown(metrics, split, drawn, extra, shortcut, ood, robustness))
  written = {k: os.path.join(out_dir, v) for k, v in drawn.items()}
  written['json'] = os.path.join(out_dir, 'report.json')
  written['markdown'] = os.path.join(out_dir, 'report.md')
  return written


def split_robustness(module, variables, config, handle, split: str, batch_size: int) -> dict:
  """The robustness section of a prepared split (`robustness.for_model` on its films)."""
  greys, labels, _ = gradcam.split_images(config.data, handle, split, batch_size)
  names = handle.class_names
  return robustness_lib.for_model(
    module,
    variables,
    greys,
    labels,
    names,
    zoom_range=tuple(config.data.augment.zoom),
    batch_size=batch_size,
  )


def evaluate_workdir(
  workdir: str,
  split: str = 'test',
  *,
  which: str = 'best',
  out: str = '',
  batch_size: int = 0,
  bootstrap: int = -1,
  shortcut: bool | None = None,
  ood: bool | None = None,
  robustness: bool = True,
  figures: bool = True,
) -> dict:
  """Evaluates a training workdir's checkpoint on a split and writes the report (launch.evaluate).

  Args:
    workdir: training workdir (config.json + checkpoints, metrics.jsonl for the curves).
    split: 'train', 'validation' or 'test'.
    which: 'best' or 'latest' checkpoint.
    out: report folder; '' = <workdir>/eval_<split>.
    batch_size: 0 = config.eval.batch_size.
    bootstrap: CI resamples; -1 = config.eval.bootstrap.
    shortcut: add the Grad-CAM shortcut indicator and example panels; None = config.eval.shortcut.
    ood: add the out-of-distribution section (`ood_eval`) with the workdir's fitted score, fitting
      it first if needed; None = when a score is fitted for this checkpoint.
    robustness: add the robustness section (`jaxcxr.evaluation.robustness`).
    figures: draw the report's PNG figures (`write_report`).

  Returns:
    {'metrics': compute_metrics(...), 'files': write_report(...), 'out_dir', 'shortcut',
     'robustness' (the section or None)}.
  """
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  cfg = bundle.config
  batch_size = batch_size or int(cfg.eval.batch_size)
  n_bootstrap = bootstrap if bootstrap >= 0 else int(cfg.eval.bootstrap)
  handle = data.prepare(cfg.data)
  predict = inference.make_predict_fn(bundle.module, bundle.variables, tta=bundle.tta)
  labels, probs, _ = validation.predict_split(
    predict,
    cfg.data,
    handle,
    split,
    local_batch_size=batch_size,
    mesh=sharding.make_mesh(jax.devices()[:1]),
  )
  metrics = compute_metrics(
    labels, probs, bundle.class_names, n_bootstrap=n_bootstrap, seed=int(cfg.get('seed', 0))
  )
  out_dir = out or os.path.join(workdir, f'eval_{split}')
  extra = {
    'workdir': os.path.abspath(workdir),
    'checkpoint': which,
    'step': int(bundle.step),
    'model': cfg.model.name,
    'image_size': int(bundle.image_size),
  }
  if shortcut is None:
    shortcut = bool(cfg.eval.get('shortcut', False))
  analysis = None
  if shortcut:
    analysis = shortcut_lib.analyse_split(
      bundle.module,
      bundle.variables,
      cfg.data,
      handle,
      split,
      out_dir,
      bundle.class_names,
      batch_size=batch_size,
    )
  if ood is None:
    ood = ood_lib.load_for(workdir, bundle)[0] is not None
  ood_section = (
    ood_eval.run_section(workdir, bundle, handle, split, which=which, refit=False) if ood else None
  )
  robust = (
    split_robustness(bundle.module, bundle.variables, cfg, handle, split, batch_size)
    if robustness
    else None
  )
  files = write_report(
    out_dir,
    metrics,
    labels,
    probs,
    bundle.class_names,
    history=run_log.read_rows(workdir, 'epoch'),
    split=split,
    extra=extra,
    shortcut=analysis,
    ood=ood_section,
    robustness=robust,
    figures=figures,
  )
  return {
    'metrics': metrics,
    'files': files,
    'out_dir': out_dir,
    'shortcut': analysis,
    'robustness': robust,
  }


def write_run_report(
  workdir: str,
  config,
  labels,
  probs,
  class_names: Sequence[str],
  history: list[dict],
  summary: dict,
) -> dict:
  """The report at the end of a training run (the `reporter` of `train_and_evaluate`)."""
  metrics = compute_metrics(
    labels, probs, class_names, n_bootstrap=config.eval.bootstrap, seed=config.seed
  )
  # The checkpoint the summary evaluated (the best one; the latest when none was kept as best).
  bundle, which = ood_eval.restore_shipped(workdir)
  handle = data.prepare(config.data)
  analysis = None
  if config.eval.get('shortcut', False):
    analysis = shortcut_lib.analyse_split(
      bundle.module,
      bundle.variables,
      config.data,
      handle,
      summary['split'],
      workdir,
      class_names,
      batch_size=config.eval.batch_size,
    )
  # The out-of-distribution score: fitted on this run's train split, saved for launch.predict
  # (without the section, `train_and_report` fits it).
  ood_section = (
    ood_eval.run_section(workdir, bundle, handle, summary['split'], which=which)
    if config.eval.get('ood', True)
    else None
  )
  robust = (
    split_robustness(
      bundle.module, bundle.variables, config, handle, summary['split'], config.eval.batch_size
    )
    if config.eval.get('robustness', True)
    else None
  )
  return write_report(
    workdir,
    metrics,
    labels,
    probs,
    class_names,
    history=history,
    split=summary['split'],
    extra=summary,
    shortcut=analysis,
    ood=ood_section,
    robustness=robust,
    figures=config.eval.get('figures', True),
  )


def train_and_report(config, workdir: str) -> dict:
  """`launch.train`: trains (or resumes) the run in `workdir`, then writes its evaluation report.

  The report fits the out-of-distribution score (`ood_eval`); a run without a test split writes
  no report, so its score is fitted here, on process 0.
  """
  summary = loop.train_and_evaluate(config, workdir, reporter=write_run_report)
  if jax.process_index() == 0:
    line = ood_eval.ensure_fitted(workdir, summary.get('best_step'))
    if line:
      print(line, file=sys.stderr)
  return summary
