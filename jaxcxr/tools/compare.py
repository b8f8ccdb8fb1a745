"""Collects the training runs under a directory into one comparison: CSV, markdown table, bar chart.

A run is a directory with `results.json` (finished) or with `config.json` / `metrics.jsonl` but no
results yet (unfinished; listed as such). The table's hyperparameter columns are the flattened
config keys whose values differ between the runs found.
"""

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any

# Chowdhury et al. 2020 (IEEE Access 8:132665): 3-class accuracy of DenseNet201 with augmentation.
PAPER_ACCURACY_3CLASS = 0.979
PAPER_LABEL = 'Chowdhury et al. 2020: 97.9% 3-class accuracy (DenseNet201, augmentation)'
_PLOT_LABEL = 'paper: 97.9% 3-class accuracy (Chowdhury et al. 2020)'

METRIC_COLUMNS = (
  'accuracy',
  'macro_f1',
  'macro_auc',
  'best_epoch',
  'steps',
  'images_per_s',
  'wall_time_s',
)
# Keys that differ between runs but are not hyperparameters.
_IGNORED_KEYS = ('data.data_dir',)


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples (hashable, printable)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def find_runs(root: str) -> list[dict]:
  """Every run under `root` (recursively; `root` itself too), sorted by path.

  Returns:
    dicts with `trial` (path relative to root, '.' for root), `status` ('finished'/'unfinished'),
    `summary` (results.json's summary or {}) and `config` (flattened config or {}).
  """
  runs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ('checkpoints', 'best', 'tensorboard'))
    files = set(filenames)
    if not files & {'results.json', 'config.json', 'metrics.jsonl'}:
      continue
    results = _read_json(os.path.join(dirpath, 'results.json')) if 'results.json' in files else None
    config = (results or {}).get('config') or _read_json(os.path.join(dirpath, 'config.json')) or {}
    runs.append(
      {
        'trial': os.path.relpath(dirpath, root),
        'status': 'finished' if results else 'unfinished',
        'summary': (results or {}).get('summary', {}),
        'config': flatten(config),
      }
    )
  _apply_sweep_status(root, runs)
  return sorted(runs, key=lambda r: r['trial'])


def _apply_sweep_status(root: str, runs: list[dict]) -> None:
  """Adds the status launch.sweep recorded (failed, pending, ...) for trials without results."""
  sweep = _read_json(os.path.join(root, 'sweep.json')) or {}
  by_trial = {r['trial']: r for r in runs}
  for name, entry in sweep.get('trials', {}).items():
    run = by_trial.get(name)
    if run is None:
      runs.append(
        {
          'trial': name,
          'status': entry.get('status', 'pending'),
          'summary': {},
          'config': flatten(_unflatten(entry.get('overrides', {}))),
          'partial': True,
        }
      )
    elif run['status'] != 'finished' and entry.get('status') in (
      'failed',
      'running',
      'interrupted',
    ):
      run['status'] = entry['status']


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for k, v in flat.items():
    *parents, leaf = k.split('.')
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def varying_keys(configs: Sequence[dict]) -> list[str]:
  """Flattened keys whose values are not the same in every config (sorted)."""
  if len(configs) < 2:
    return []
  keys = sorted(set().union(*configs))
  return [
    k
    for k in keys
    if k not in _IGNORED_KEYS and len({json.dumps(c.get(k), default=repr) for c in configs}) > 1
  ]


def _metric(summary: dict, name: str) -> Any:
  """`<split>_<name>` (e.g. test_macro_f1) or a plain summary key (best_epoch, images_per_s)."""
  return summary.get(f'{summary.get("split", "test")}_{name}', summary.get(name))


def _number(v: Any) -> float:
  return v if isinstance(v, (int, float)) and not math.isnan(v) else -1.0


def table(runs: Sequence[dict]) -> tuple[list[str], list[dict]]:
  """(columns, rows): one row per run, finished ones by macro F1 (best first), then unfinished."""
  full = [r['config'] for r in runs if not r.get('partial')] or [r['config'] for r in runs]
  hyper = [k for k in varying_keys(full) if k != 'model.name']
  columns = ['trial', 'status', 'model', *hyper, 'split', *METRIC_COLUMNS]
  rows = []
  for r in runs:
    s = r['summary']
    row = {
      'trial': r['trial'],
      'status': r['status'],
      'model': s.get('model', r['config'].get('model.name', '')),
      **{k: r['config'].get(k, '') for k in hyper},
      'split': s.get('split', ''),
    }
    row.update({m: _metric(s, m) for m in METRIC_COLUMNS})
    rows.append(row)

  return columns, sorted(
    rows, key=lambda row: (row['status'] != 'finished', -_number(row['macro_f1']), row['trial'])
  )


def _fmt(v: Any, column: str) -> str:
  if v is None or v == '':
    return ''
  if isinstance(v, float):
    if math.isnan(v):
      return 'nan'
    if column in ('accuracy', 'macro_f1', 'macro_auc'):
      return f'{v:.4f}'
    if column in ('images_per_s', 'wall_time_s'):
      return f'{v:.1f}'
    return f'{v:g}'
  if isinstance(v, tuple):
    return '(' + ', '.join(str(x) for x in v) + ')'
  return str(v)


def write_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(columns))
    w.writeheader()
    for row in rows:
      w.writerow({c: '' if row.get(c) is None else row.get(c) for c in columns})


def markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
  """A markdown table (values formatted; unfinished runs have empty metrics)."""

  def esc(s):
    return s.replace('|', '\\|')

  lines = [
    '| ' + ' | '.join(esc(c) for c in columns) + ' |',
    '|' + '|'.join(' --- ' for _ in columns) + '|',
  ]
  for row in rows:
    lines.append('| ' + ' | '.join(esc(_fmt(row.get(c), c)) for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def figure(
  rows: Sequence[dict],
  *,
  reference: float = PAPER_ACCURACY_3CLASS,
  reference_label: str = _PLOT_LABEL,
):
  """Grouped bars of accuracy and macro F1 per finished run, with the paper's reference line."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  done = [r for r in rows if r['status'] == 'finished']
  acc = np.array([_number(r['accuracy']) for r in done], float).clip(0)
  f1 = np.array([_number(r['macro_f1']) for r in done], float).clip(0)
  x = np.arange(len(done))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(done) + 3), 5.0))
  w = 0.4
  for offset, values, label in ((-w / 2, acc, 'accuracy'), (w / 2, f1, 'macro F1')):
    bars = ax.bar(x + offset, values, w, label=label)
    ax.bar_label(bars, fmt='%.3f', fontsize=7, padding=1)
  ax.axhline(reference, color='crimson', linestyle='--', linewidth=1.2, label=reference_label)
  ax.set_xticks(x, [r['trial'] for r in done], rotation=30, ha='right', fontsize=8)
  ax.set_ylim(0.0, 1.3)  # head room for the legend above the 0.979 line
  ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
  ax.set_ylabel(f'{done[0]["split"] if done else "test"} split score')
  ax.set_title('jaxcxr runs: accuracy and macro F1')
  ax.legend(loc='upper left', fontsize=8)
  fig.tight_layout()
  return fig


def plot(path: str, rows: Sequence[dict], **kwargs) -> None:
  """Writes `figure(rows)` to `path` (PNG)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig = figure(rows, **kwargs)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def compare(root: str, *, with_plot: bool = True) -> dict[str, Any]:
  """Writes root/results.csv, results.md and comparison.png; returns paths, columns and rows."""
  runs = find_runs(root)
  if not runs:
    raise FileNotFoundError(f'No training runs (results.json / config.json) under {root}.')
  columns, rows = table(runs)
  out = {
    'csv': os.path.join(root, 'results.csv'),
    'md': os.path.join(root, 'results.md'),
    'columns': columns,
    'rows': rows,
  }
  write_csv(out['csv'], columns, rows)
  n_done = sum(r['status'] == 'finished' for r in rows)
  md = (
    f'# Runs under `{root}`\n\n{n_done} finished, {len(rows) - n_done} unfinished; sorted by '
    f'macro F1 on the evaluation split. Reference: {PAPER_LABEL} (5-fold cross-validation on '
    'the 2020 release of the database; not the same protocol).\n\n' + markdown(columns, rows)
  )
  with open(out['md'], 'w') as f:
    f.write(md)
  out['markdown'] = md
  if with_plot:
    out['png'] = os.path.join(root, 'comparison.png')
    plot(out['png'], rows)
  return out
