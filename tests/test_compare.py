"""launch.compare / jaxcxr.tools.compare on hand-made run directories with known numbers."""

import csv
import json
import os

import pytest

from jaxcxr.tools import compare
from tests import warm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(model='cnn_bn', sampling='oversample', lr=1e-3):
  return {
    'seed': 0,
    'model': {'name': model, 'dtype': 'float32'},
    'data': {
      'sampling': sampling,
      'augment': {'zoom': [0.9, 1.1]},
      'image_size': 32,
      'data_dir': '/tmp/x',
    },
    'optim': {'learning_rate': lr, 'name': 'adamw'},
  }


def _run(
  root, name, *, f1, acc, auc=0.9, model='cnn_bn', sampling='oversample', lr=1e-3, finished=True
):
  d = root / name
  d.mkdir(parents=True)
  config = _config(model, sampling, lr)
  (d / 'config.json').write_text(json.dumps(config))
  if finished:
    summary = {
      'model': model,
      'split': 'test',
      'best_epoch': 2,
      'steps': 10,
      'images_per_s': 123.456,
      'wall_time_s': 61.0,
      'test_accuracy': acc,
      'test_macro_f1': f1,
      'test_macro_auc': auc,
    }
    (d / 'results.json').write_text(json.dumps({'summary': summary, 'config': config}))
  (d / 'checkpoints').mkdir()
  return d


@pytest.fixture
def runs(tmp_path):
  _run(tmp_path, '000-a', f1=0.50, acc=0.60, model='vgg19', lr=5e-4)
  _run(tmp_path, '001-b', f1=0.90, acc=0.91, model='densenet201', sampling='none')
  _run(tmp_path, 'nested/002-c', f1=0.70, acc=0.75, auc=float('nan'))
  _run(tmp_path, '003-d', f1=None, acc=None, finished=False)
  # A trial that launch.sweep listed but never started.
  (tmp_path / 'sweep.json').write_text(
    json.dumps(
      {
        'trials': {
          '004-e': {'status': 'pending', 'overrides': {'data.sampling': 'none'}},
          '003-d': {'status': 'failed', 'returncode': 2},
        }
      }
    )
  )
  return tmp_path


def test_flatten_and_varying_keys():
  flat = compare.flatten({'a': {'b': 1, 'c': [1, 2]}, 'd': 'x'})
  assert flat == {'a.b': 1, 'a.c': (1, 2), 'd': 'x'}
  configs = [
    compare.flatten(_config('vgg19', lr=1e-4)),
    compare.flatten(_config('cnn_bn')),
    compare.flatten(_config('cnn_bn', 'none')),
  ]
  # data.data_dir is ignored; model.name is a varying key (the table shows it as 'model').
  assert compare.varying_keys(configs) == ['data.sampling', 'model.name', 'optim.learning_rate']
  assert compare.varying_keys(configs[:1]) == []


def test_table_sorted_by_macro_f1_with_unfinished_last(runs):
  columns, rows = compare.table(compare.find_runs(str(runs)))
  assert columns == [
    'trial',
    'status',
    'model',
    'data.sampling',
    'optim.learning_rate',
    'split',
    'accuracy',
    'macro_f1',
    'macro_auc',
    'best_epoch',
    'steps',
    'images_per_s',
    'wall_time_s',
  ]
  assert [r['trial'] for r in rows] == ['001-b', 'nested/002-c', '000-a', '003-d', '004-e']
  assert [r['status'] for r in rows] == ['finished'] * 3 + ['failed', 'pending']
  assert [r['macro_f1'] for r in rows[:3]] == [0.90, 0.70, 0.50]
  assert [r['accuracy'] for r in rows[:3]] == [0.91, 0.75, 0.60]
  assert rows[0]['model'] == 'densenet201' and rows[0]['data.sampling'] == 'none'
  assert rows[2]['optim.learning_rate'] == 5e-4
  assert rows[3]['macro_f1'] is None and rows[3]['model'] == 'cnn_bn'  # from config.json


def test_compare_writes_csv_markdown_and_plot(runs):
  out = compare.compare(str(runs))
  with open(runs / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5
  assert [float(r['macro_f1']) for r in rows[:3]] == [0.9, 0.7, 0.5]
  assert rows[1]['macro_auc'] == 'nan' and rows[3]['accuracy'] == ''
  md = (runs / 'results.md').read_text()
  table_lines = [line for line in md.splitlines() if line.startswith('|')]
  assert len(table_lines) == 2 + 5
  assert table_lines[2] == (
    '| 001-b | finished | densenet201 | none | 0.001 | test | 0.9100 | '
    '0.9000 | 0.9000 | 2 | 10 | 123.5 | 61.0 |'
  )
  assert '| 004-e | pending |' in md and '3 finished, 2 unfinished' in md
  png = (runs / 'comparison.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
  assert out['rows'][0]['trial'] == '001-b'


def test_figure_has_bars_per_finished_run_and_paper_line(runs):
  _, rows = compare.table(compare.find_runs(str(runs)))
  fig = compare.figure(rows)
  ax = fig.axes[0]
  heights = sorted(round(p.get_height(), 4) for p in ax.patches)
  assert heights == sorted([0.91, 0.75, 0.60, 0.90, 0.70, 0.50])
  lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.979, 0.979]]
  assert len(lines) == 1 and '97.9%' in lines[0].get_label()
  assert [t.get_text() for t in ax.get_xticklabels()] == ['001-b', 'nested/002-c', '000-a']


def test_launch_compare_cli(runs, tmp_path_factory):
  r = warm.run_module(
    'launch.compare', ['--workdir', runs, '--noplot'], env=os.environ, cwd=REPO, timeout=300
  )
  assert r.returncode == 0, r.stderr
  assert '| 001-b | finished | densenet201 |' in r.stdout
  assert (runs / 'results.csv').exists() and not (runs / 'comparison.png').exists()
  empty = tmp_path_factory.mktemp('empty')
  r = warm.run_module('launch.compare', ['--workdir', empty], env=os.environ, cwd=REPO, timeout=300)
  assert r.returncode == 2 and 'No training runs' in r.stderr
