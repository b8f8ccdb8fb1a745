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
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcxr import data as data_lib
from jaxcxr.evaluation import metrics as metrics_lib
from jaxcxr.training import checkpoint


def _load() -> float:
  return os.getloadavg()[0]


def run_timed(cmd: Sequence[str], timeout_s: float, log_path: str,
              env: dict | None = None) -> tuple[int | None, float]:
  """Runs `cmd` with output to `log_path`. Returns (exit status, or None if killed at timeout; s)."""
  t0 = time.perf_counter()
  with open(log_path, 'w') as log:
    try:
      proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                            env=env, check=False)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = None
  return code, time.perf_counter() - t0


def jax_command(config: str, workdir: str, manual_dir: str, data_dir: str,
                overrides: Sequence[str] = ()) -> list[str]:
  """The `launch.train` command of the jaxcxr side."""
  return [sys.executable, '-m', 'launch.train', '--config', config, '--workdir', workdir,
          f'--config.data.manual_dir={manual_dir}', f'--config.data.data_dir={data_dir}',
          *overrides]


def split_files(workdir: str) -> dict:
  """{'class_names', 'train': [[path, label], ...], 'test': [...]} of the run's prepared split."""
  cfg = checkpoint.read_config(workdir)
  handle = data_lib.prepare(cfg.data, progress=False)
  root = Path(cfg.data.manual_dir).expanduser()
  out = {'class_names': list(handle.class_names)}
  for split in ('train', 'test'):
    out[split] = [[str(root / name), int(label)]
                  for name, label in zip(handle.filenames(split), handle.labels(split))]
  return out


def score(labels, probs, class_names: Sequence[str]) -> dict:
  """The table's quality columns from labels and probabilities (no bootstrap)."""
  m = metrics_lib.compute_metrics(labels, probs, class_names, n_bootstrap=0)
  return _quality(m)


def _quality(m: dict) -> dict:
  return {'macro_f1': m['macro']['f1'], 'accuracy': m['accuracy'],
          'recall': {c: v['recall'] for c, v in m['per_class'].items()},
          'num_test': m['num_examples']}


def jax_row(workdir: str, code: int | None, wall_s: float, budget_s: float) -> dict:
  """The jaxcxr row from its workdir (report.json of the test split, results.json)."""
  row = {'name': 'jaxcxr', 'wall_s': wall_s, 'within_budget': code is not None and
         wall_s <= budget_s, 'status': 'ok' if code == 0 else
         ('killed at the budget' if code is None else f'exit {code}')}
  report_path = os.path.join(workdir, 'report.json')
  if code == 0 and os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
    with open(os.path.join(workdir, 'results.json')) as f:
      summary = json.load(f)['summary']
    cfg = checkpoint.read_config(workdir)
    row.update(_quality(report['metrics']))
    row['train_img_s'] = summary.get('images_per_s')
    row['recipe'] = (f'{cfg.model.name} {cfg.data.image_size} px, {cfg.train.num_epochs} epochs, '
                     f'batch {cfg.train.batch_size}, sampling {cfg.data.sampling}')
  return row


def torch_row(result_path: str, code: int | None, wall_s: float, budget_s: float,
              class_names: Sequence[str], test: Sequence) -> dict:
  """The torch row from the worker's JSON (probabilities of the test files, in order)."""
  row = {'name': 'torchvision', 'wall_s': wall_s, 'within_budget': code is not None and
         wall_s <= budget_s, 'status': 'ok' if code == 0 else
         ('killed at the budget' if code is None else f'exit {code}')}
  if code == 0 and os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    labels = np.asarray([label for _, label in test])
    row.update(score(labels, np.asarray(result['probs']), class_names))
    row['train_img_s'] = result['train_img_s']
    row['recipe'] = result['recipe']
    if result.get('stopped_by_budget'):
      row['status'] = f'ok (stopped after {result["epochs_done"]:.2f} epochs: budget)'
  return row


def _fmt(v, digits: int = 3) -> str:
  if v is None:
    return '-'
  return f'{v:.{digits}f}' if isinstance(v, float) else str(v)


def format_table(rows: Sequence[dict], class_names: Sequence[str]) -> str:
  """One Markdown table: macro-F1, accuracy, per-class recall, wall time, images/s, status."""
  head = (['run', 'macro-F1', 'accuracy'] + [f'recall {c}' for c in class_names] +
          ['test images', 'wall s', 'train img/s', 'within budget', 'status'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    recall = r.get('recall', {})
    cells = ([r['name'], _fmt(r.get('macro_f1')), _fmt(r.get('accuracy'))] +
             [_fmt(recall.get(c)) for c in class_names] +
             [_fmt(r.get('num_test')), _fmt(r.get('wall_s'), 0), _fmt(r.get('train_img_s'), 1),
              'yes' if r.get('within_budget') else 'NO', r.get('status', '')])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run(manual_dir: str, out_dir: str, *, budget_s: float, config: str,
        jax_overrides: Sequence[str], torch_command: Callable[[str, str, float], list[str]],
        env: dict | None = None) -> dict:
  """Runs both sides and returns {'rows', 'table', 'class_names', 'budget_s', 'loadavg'}.

  Args:
    manual_dir: the Kaggle-layout folder.
    out_dir: wiped per side and rewritten: jaxcxr/ (workdir), tfds/ (its fresh data_dir),
      splits.json, torch.json, *.log, benchmark_quality.json.
    budget_s: wall-clock budget of each side.
    config: the jaxcxr config file (default recipe: configs/cxr_cpu.py).
    jax_overrides: extra `--config.x=y` flags for the jaxcxr side.
    torch_command: (splits.json, torch.json, budget_s) -> the torch worker's command line.
    env: subprocess environment.
  """
  manual_dir = str(Path(manual_dir).expanduser().resolve())
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'--manual_dir={manual_dir} is not a folder; pass a Kaggle-layout '
                            'folder (COVID/, Normal/, Viral Pneumonia/).')
  out = Path(out_dir)
  workdir, data_dir = out / 'jaxcxr', out / 'tfds'
  for d in (workdir, data_dir):
    shutil.rmtree(d, ignore_errors=True)   # a stale workdir would resume, stale data skip prepare
  out.mkdir(parents=True, exist_ok=True)
  loads = {'start': _load()}
  code, wall = run_timed(jax_command(config, str(workdir), manual_dir, str(data_dir),
                                     jax_overrides), budget_s, str(out / 'jaxcxr.log'), env)
  loads['after_jaxcxr'] = _load()
  rows = [jax_row(str(workdir), code, wall, budget_s)]
  if not (workdir / checkpoint.CONFIG_FILE).exists():
    raise RuntimeError(f'The jaxcxr run wrote no config (see {out / "jaxcxr.log"}); the torch side '
                       'needs its prepared split.')
  splits = split_files(str(workdir))
  with open(out / 'splits.json', 'w') as f:
    json.dump(splits, f)
  result_path = out / 'torch.json'
  result_path.unlink(missing_ok=True)
  code, wall = run_timed(torch_command(str(out / 'splits.json'), str(result_path), budget_s),
                         budget_s, str(out / 'torch.log'), env)
  loads['after_torch'] = _load()
  rows.append(torch_row(str(result_path), code, wall, budget_s, splits['class_names'],
                        splits['test']))
  summary = {'rows': rows, 'class_names': splits['class_names'], 'budget_s': budget_s,
             'loadavg': loads, 'table': format_table(rows, splits['class_names'])}
  with open(out / 'benchmark_quality.json', 'w') as f:
    json.dump(summary, f, indent=2)
  return summary
