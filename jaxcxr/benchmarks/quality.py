"""Side-by-side quality benchmark: the jaxcxr recipe against a plain torchvision ResNet-18 recipe.

`python -m launch.benchmark_quality --manual_dir DIR [--budget_s 600]` runs, one after the other
(so they never compete for the CPU), each in its own subprocess under the same wall-clock budget:

1. jaxcxr: `launch.train` with the recipe (`configs/cxr_cpu.py` by default) on a fresh workdir and
   a fresh TFDS data_dir, so everything the user would wait for counts: dataset preparation,
   compilation, training, checkpoint selection on the validation split, the final evaluation and
   report. Over the budget, the run is stopped and has no score.
2. torch: the issue-#13 baseline (ResNet-18 from scratch with a 1-channel 7x7 stem, 128 px,
   AdamW 1e-3 with one-cycle, RandomAffine(10 deg, translate 0.06, scale 0.9-1.1), batch 32,
   8 epochs, plain cross-entropy), in the launcher's worker (torch is a benchmark dependency
   only). It trains on the files of the TRAIN split that the jaxcxr run prepared (the same
   images) and predicts the files of the TEST split; it stops early if the budget runs out.

Both are scored on the same test images with `jaxcxr.evaluation.metrics.compute_metrics`
(jaxcxr: its report of the test split). The table: macro-F1, accuracy, per-class recall, wall
time, training images/s, and whether the run finished within the budget.

With `eval_dir` (an external Kaggle-layout folder, e.g. ../shared/data/cxr_eval), both sides
train on the whole training folder (jaxcxr: the films its recipe trains on; torch: every film) and
are scored on the external films instead: jaxcxr by `launch.predict` on its shipped checkpoint
(timed, added to its wall time), torch by its worker. macro-F1 then carries its 95 % bootstrap
interval (1,000 resamples).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxcxr import data as data_lib
from jaxcxr.data import dataset, folders
from jaxcxr.evaluation import inference, robustness
from jaxcxr.evaluation import metrics as metrics_lib
from jaxcxr.training import checkpoint


def _load() -> float:
  return os.getloadavg()[0]


def run_timed(
  cmd: Sequence[str], timeout_s: float, log_path: str, env: dict | None = None
) -> tuple[int | None, float]:
  """Runs `cmd` with output to `log_path`.

  Returns:
    (exit status, or None if killed at timeout; seconds).
  """
  t0 = time.perf_counter()
  with open(log_path, 'w') as log:
    try:
      proc = subprocess.run(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=env, check=False
      )
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = None
  return code, time.perf_counter() - t0


def jax_command(
  config: str, workdir: str, manual_dir: str, data_dir: str, overrides: Sequence[str] = ()
) -> list[str]:
  """The `launch.train` command of the jaxcxr side."""
  return [
    sys.executable,
    '-m',
    'launch.train',
    '--config',
    config,
    '--workdir',
    workdir,
    f'--config.data.manual_dir={manual_dir}',
    f'--config.data.data_dir={data_dir}',
    *overrides,
  ]


def split_files(workdir: str, eval_dir: str = '') -> dict:
  """{'class_names', 'train': [[path, label], ...], 'test': [...]} of the run's prepared split.

  With `eval_dir`: 'train' is every film of the training folder (all prepared splits) and 'test'
  the films of the external folder.
  """
  cfg = checkpoint.read_config(workdir)
  handle = data_lib.prepare(cfg.data, progress=False)
  root = Path(cfg.data.manual_dir).expanduser()
  out = {'class_names': list(handle.class_names), 'train': [], 'test': []}
  splits = (
    {'train': ('train', 'validation', 'test'), 'test': ()}
    if eval_dir
    else {'train': ('train',), 'test': ('test',)}
  )
  for side, names in splits.items():
    for split in names:
      if handle.num_examples.get(split):
        out[side] += [
          [str(root / name), int(label)]
          for name, label in zip(handle.filenames(split), handle.labels(split), strict=True)
        ]
  if eval_dir:
    out['test'] = external_files(eval_dir, handle.class_names)
  return out


def external_files(eval_dir: str, class_names: Sequence[str]) -> list[list]:
  """[[path, label], ...] of a Kaggle-layout folder, classes as `class_names` (sorted by path)."""
  entries, _ = folders.scan_folder(Path(eval_dir).expanduser(), tuple(class_names))
  return [[str(e.path), int(e.label)] for e in entries]


def score(labels, probs, class_names: Sequence[str], n_bootstrap: int = 0) -> dict:
  """The table's quality columns from labels and probabilities (macro-F1 CI with n_bootstrap)."""
  m = metrics_lib.compute_metrics(labels, probs, class_names, n_bootstrap=n_bootstrap)
  return _quality(m)


def _quality(m: dict) -> dict:
  out = {
    'macro_f1': m['macro']['f1'],
    'accuracy': m['accuracy'],
    'recall': {c: v['recall'] for c, v in m['per_class'].items()},
    'num_test': m['num_examples'],
  }
  if m.get('ci95'):
    out['macro_f1_ci'] = list(m['ci95']['macro_f1'])
  return out


def predictions_csv_probs(csv_path: str, files: Sequence, class_names: Sequence[str]) -> np.ndarray:
  """(N, C) probabilities of `files` ([[path, label], ...]) from a `launch.predict` CSV."""
  with open(csv_path) as f:
    rows = {os.path.abspath(r['file']): r for r in csv.DictReader(f)}
  missing = [p for p, _ in files if os.path.abspath(p) not in rows]
  if missing:
    raise RuntimeError(
      f'{len(missing)} external films have no prediction in {csv_path} '
      f'(first: {missing[0]}); see the predict log beside it.'
    )
  return np.asarray(
    [[float(rows[os.path.abspath(p)][f'prob_{c}']) for c in class_names] for p, _ in files]
  )


def jax_row(workdir: str, code: int | None, wall_s: float, budget_s: float) -> dict:
  """The jaxcxr row from its workdir (report.json of the test split, results.json)."""
  row = {
    'name': 'jaxcxr',
    'wall_s': wall_s,
    'within_budget': code is not None and wall_s <= budget_s,
    'status': 'ok' if code == 0 else ('killed at the budget' if code is None else f'exit {code}'),
  }
  report_path = os.path.join(workdir, 'report.json')
  results_path = os.path.join(workdir, 'results.json')
  if code == 0 and os.path.exists(results_path):  # no report.json without a test split
    with open(results_path) as f:
      summary = json.load(f)['summary']
    cfg = checkpoint.read_config(workdir)
    if os.path.exists(report_path):
      with open(report_path) as f:
        row.update(_quality(json.load(f)['metrics']))
    row['train_img_s'] = summary.get('images_per_s')
    row['recipe'] = (
      f'{cfg.model.name} {cfg.data.image_size} px, {cfg.train.num_epochs} epochs, '
      f'batch {cfg.train.batch_size}, sampling {cfg.data.sampling}'
    )
  return row


def torch_row(
  result_path: str,
  code: int | None,
  wall_s: float,
  budget_s: float,
  class_names: Sequence[str],
  test: Sequence,
  n_bootstrap: int = 0,
) -> dict:
  """The torch row from the worker's JSON (probabilities of the test files, in order)."""
  row = {
    'name': 'torchvision',
    'wall_s': wall_s,
    'within_budget': code is not None and wall_s <= budget_s,
    'status': 'ok' if code == 0 else ('killed at the budget' if code is None else f'exit {code}'),
  }
  if code == 0 and os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    labels = np.asarray([label for _, label in test])
    row.update(score(labels, np.asarray(result['probs']), class_names, n_bootstrap))
    if result.get('robust_probs'):
      row['robustness'] = robustness.summarise(
        labels, np.asarray(result['probs']), result['robust_probs'], class_names
      )
    row['train_img_s'] = result['train_img_s']
    row['recipe'] = result['recipe']
    if result.get('stopped_by_budget'):
      row['status'] = f'ok (stopped after {result["epochs_done"]:.2f} epochs: budget)'
  return row


def jax_robustness(workdir: str, test: Sequence) -> dict:
  """The robustness section of the jaxcxr run's shipped model on the test films ([[path, label]]).

  The same films, perturbations and partner films as the torch worker's (each side perturbs the
  films at its own input size); no test-time augmentation on either side.
  """
  bundle = checkpoint.restore_for_inference(workdir)
  films = inference.read_films(
    [p for p, _ in test], bundle.image_size, stored_size=dataset.stored_size(bundle.config.data)
  )
  labels = np.asarray([label for _, label in test])[films.ok]
  return robustness.for_model(
    bundle.module,
    bundle.variables,
    films.inputs,
    labels,
    bundle.class_names,
    zoom_range=tuple(bundle.config.data.augment.zoom),
  )


def robustness_table(rows: Sequence[dict]) -> str:
  """Both sides' robustness sections side by side ('' when no side has one)."""
  sections = {r['name']: r['robustness'] for r in rows if r.get('robustness')}
  return robustness.comparison_table(sections) if sections else ''


def _fmt(v, digits: int = 3) -> str:
  if v is None:
    return '-'
  return f'{v:.{digits}f}' if isinstance(v, float) else str(v)


def format_table(rows: Sequence[dict], class_names: Sequence[str]) -> str:
  """One Markdown table: macro-F1, accuracy, per-class recall, wall time, images/s, status."""
  head = (
    ['run', 'macro-F1 [95% CI]', 'accuracy']
    + [f'recall {c}' for c in class_names]
    + ['test images', 'wall s', 'train img/s', 'within budget', 'status']
  )
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    recall = r.get('recall', {})
    f1 = _fmt(r.get('macro_f1'))
    if r.get('macro_f1_ci'):
      f1 += f' [{r["macro_f1_ci"][0]:.3f}, {r["macro_f1_ci"][1]:.3f}]'
    cells = (
      [r['name'], f1, _fmt(r.get('accuracy'))]
      + [_fmt(recall.get(c)) for c in class_names]
      + [
        _fmt(r.get('num_test')),
        _fmt(r.get('wall_s'), 0),
        _fmt(r.get('train_img_s'), 1),
        'yes' if r.get('within_budget') else 'NO',
        r.get('status', ''),
      ]
    )
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def predict_command(workdir: str, eval_dir: str, csv_path: str) -> list[str]:
  """The `launch.predict` command that scores the jaxcxr run on the external films."""
  return [
    sys.executable,
    '-m',
    'launch.predict',
    '--workdir',
    workdir,
    '--images',
    eval_dir,
    '--out',
    csv_path,
  ]


def external_jax_row(
  workdir: str,
  code: int | None,
  wall_s: float,
  budget_s: float,
  splits: dict,
  csv_path: str,
  n_bootstrap: int,
) -> dict:
  """The jaxcxr row scored on the external films (the predictions CSV of its shipped checkpoint)."""
  row = jax_row(workdir, code, wall_s, budget_s)
  for key in ('macro_f1', 'accuracy', 'recall', 'num_test'):
    row.pop(key, None)
  if code == 0:
    labels = np.asarray([label for _, label in splits['test']])
    probs = predictions_csv_probs(csv_path, splits['test'], splits['class_names'])
    row.update(score(labels, probs, splits['class_names'], n_bootstrap))
  return row


def run(
  manual_dir: str,
  out_dir: str,
  *,
  budget_s: float,
  config: str,
  jax_overrides: Sequence[str],
  torch_command: Callable[[str, str, float], list[str]] | None,
  env: dict | None = None,
  eval_dir: str = '',
  n_bootstrap: int = 1000,
) -> dict:
  """Runs both sides: {'rows', 'table', 'robustness_table', 'class_names', 'budget_s', 'loadavg'}.

  Args:
    manual_dir: the Kaggle-layout folder.
    out_dir: wiped per side and rewritten: jaxcxr/ (workdir), tfds/ (its fresh data_dir),
      splits.json, torch.json, *.log, benchmark_quality.json.
    budget_s: wall-clock budget of each side.
    config: the jaxcxr config file (default recipe: configs/cxr_cpu.py).
    jax_overrides: extra `--config.x=y` flags for the jaxcxr side.
    torch_command: (splits.json, torch.json, budget_s) -> the torch worker's command line; None
      runs the jaxcxr side alone (recipe exploration: one row, no torch).
    env: subprocess environment.
    eval_dir: an external Kaggle-layout folder to score both sides on (module docstring).
    n_bootstrap: resamples of the macro-F1 interval with `eval_dir`.
  """
  manual_dir = str(Path(manual_dir).expanduser().resolve())
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
      f'--manual_dir={manual_dir} is not a folder; pass a Kaggle-layout '
      'folder (COVID/, Normal/, Viral Pneumonia/).'
    )
  if eval_dir and not os.path.isdir(eval_dir):
    raise FileNotFoundError(
      f'--eval_dir={eval_dir} is not a folder; pass a Kaggle-layout folder '
      'of films the training folder does not hold.'
    )
  out = Path(out_dir)
  workdir, data_dir = out / 'jaxcxr', out / 'tfds'
  for d in (workdir, data_dir):
    shutil.rmtree(d, ignore_errors=True)  # a stale workdir would resume, stale data skip prepare
  out.mkdir(parents=True, exist_ok=True)
  loads = {'start': _load()}
  code, wall = run_timed(
    jax_command(config, str(workdir), manual_dir, str(data_dir), jax_overrides),
    budget_s,
    str(out / 'jaxcxr.log'),
    env,
  )
  if not (workdir / checkpoint.CONFIG_FILE).exists():
    raise RuntimeError(
      f'The jaxcxr run wrote no config (see {out / "jaxcxr.log"}); the torch side '
      'needs its prepared split.'
    )
  splits = split_files(str(workdir), eval_dir)
  if eval_dir:
    csv_path = str(out / 'jaxcxr_external.csv')
    if code == 0:
      code, predict_s = run_timed(
        predict_command(str(workdir), eval_dir, csv_path),
        budget_s,
        str(out / 'jaxcxr_predict.log'),
        env,
      )
      wall += predict_s
    rows = [external_jax_row(str(workdir), code, wall, budget_s, splits, csv_path, n_bootstrap)]
  else:
    rows = [jax_row(str(workdir), code, wall, budget_s)]
  if code == 0:  # in this process, untimed: not part of the recipe's wall time
    rows[0]['robustness'] = jax_robustness(str(workdir), splits['test'])
  loads['after_jaxcxr'] = _load()
  with open(out / 'splits.json', 'w') as f:
    json.dump(splits, f)
  result_path = out / 'torch.json'
  result_path.unlink(missing_ok=True)
  if torch_command is not None:
    code, wall = run_timed(
      torch_command(str(out / 'splits.json'), str(result_path), budget_s),
      budget_s,
      str(out / 'torch.log'),
      env,
    )
    loads['after_torch'] = _load()
    rows.append(
      torch_row(
        str(result_path),
        code,
        wall,
        budget_s,
        splits['class_names'],
        splits['test'],
        n_bootstrap if eval_dir else 0,
      )
    )
  summary = {
    'rows': rows,
    'class_names': splits['class_names'],
    'budget_s': budget_s,
    'eval_dir': eval_dir,
    'loadavg': loads,
    'table': format_table(rows, splits['class_names']),
    'robustness_table': robustness_table(rows),
  }
  with open(out / 'benchmark_quality.json', 'w') as f:
    json.dump(summary, f, indent=2)
  return summary
