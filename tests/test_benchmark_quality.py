"""launch.benchmark_quality: both sides on the same images, one table (tiny phantom smoke run)."""

import json
from pathlib import Path

import pytest

from jaxcxr.benchmarks import quality as benchmark_quality
from jaxcxr.data import phantom
from jaxcxr.evaluation import robustness
from jaxcxr.training import checkpoint
from tests import train_helpers

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


def test_rows_and_table_from_results(tmp_path):
  # torch row: scored from the worker's probabilities with the report's metrics.
  test = [['a.png', 0], ['b.png', 1], ['c.png', 2], ['d.png', 2]]
  probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]
  (tmp_path / 't.json').write_text(
    json.dumps(
      {
        'probs': probs,
        'train_img_s': 12.5,
        'recipe': 'r',
        'stopped_by_budget': True,
        'epochs_done': 2.5,
      }
    )
  )
  row = benchmark_quality.torch_row(str(tmp_path / 't.json'), 0, 42.0, 60.0, NAMES, test)
  assert row['accuracy'] == 0.75 and row['num_test'] == 4
  assert row['recall'] == {'COVID': 1.0, 'Normal': 1.0, 'Viral Pneumonia': 0.5}
  assert row['macro_f1'] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)  # F1 per class: 2/3, 1, 2/3
  assert row['within_budget'] and 'stopped after 2.50 epochs' in row['status']
  killed = benchmark_quality.jax_row(str(tmp_path / 'none'), None, 61.0, 60.0)
  assert not killed['within_budget'] and killed['status'] == 'killed at the budget'
  table = benchmark_quality.format_table([killed, row], NAMES)
  lines = table.splitlines()
  assert lines[0].startswith('| run | macro-F1 [95% CI] | accuracy | recall COVID |')
  assert lines[2].startswith('| jaxcxr | - | - |') and '| NO | killed at the budget |' in lines[2]
  assert (
    lines[3].startswith('| torchvision | ')
    and '| 0.750 | 1.000 | 1.000 | 0.500 | 4 | 42 |' in lines[3]
  )


def test_without_torch_runs_the_jaxcxr_side_alone(tmp_path, monkeypatch):
  """torch_command=None (--notorch): launch.train and launch.predict run, the torch worker does
  not; one row, scored on the external films; no torch load average."""
  ran = []

  def run_timed(cmd, timeout_s, log_path, env=None):
    ran.append(cmd[2])
    if cmd[2] == 'launch.train':
      workdir = Path(cmd[cmd.index('--workdir') + 1])
      workdir.mkdir(parents=True)
      (workdir / checkpoint.CONFIG_FILE).write_text('{}')
    return 0, 1.5

  splits = {'class_names': list(NAMES), 'train': [['t.png', 0]], 'test': [['e.png', 1]]}
  monkeypatch.setattr(benchmark_quality, 'run_timed', run_timed)
  monkeypatch.setattr(benchmark_quality, 'split_files', lambda workdir, eval_dir: splits)
  monkeypatch.setattr(
    benchmark_quality,
    'external_jax_row',
    lambda workdir, code, wall, budget, sp, csv, n: {'name': 'jaxcxr', 'wall_s': wall},
  )
  robust_on = []
  section = robustness.summarise([1], [[0.1, 0.8, 0.1]], {'zoom_in': [[0.9, 0.05, 0.05]]}, NAMES)

  def jax_robustness(workdir, test):
    robust_on.append(test)
    return section

  monkeypatch.setattr(benchmark_quality, 'jax_robustness', jax_robustness)
  (tmp_path / 'train').mkdir()
  (tmp_path / 'external').mkdir()
  summary = benchmark_quality.run(
    str(tmp_path / 'train'),
    str(tmp_path / 'out'),
    budget_s=60,
    config='configs/cxr_cpu.py',
    jax_overrides=[],
    torch_command=None,
    eval_dir=str(tmp_path / 'external'),
  )
  assert ran == ['launch.train', 'launch.predict']
  assert [r['name'] for r in summary['rows']] == ['jaxcxr'] and summary['rows'][0]['wall_s'] == 3.0
  assert 'after_torch' not in summary['loadavg'] and '| torchvision |' not in summary['table']
  assert not (tmp_path / 'out' / 'torch.json').exists()
  # The robustness section: the shipped model on the same (external) films, in the table.
  assert robust_on == [splits['test']] and summary['rows'][0]['robustness'] == section
  assert (
    '| zoom 1.1x (training augmentation range) | 0.000 | 100.0% |' in (summary['robustness_table'])
  )


@pytest.mark.slow
def test_smoke_same_external_images(tmp_path):
  """--eval_dir: both sides train on the whole training folder (jaxcxr: its recipe's train and
  validation films) and are scored on the same external films, macro-F1 with a bootstrap CI."""
  pytest.importorskip('torchvision')
  folder = phantom.write_folder(tmp_path / 'kaggle', num_per_class=12, image_size=32, seed=0)
  external = phantom.write_folder(tmp_path / 'external', num_per_class=3, image_size=32, seed=1)
  out = tmp_path / 'out'
  jax = [
    '--config.data.image_size=32',
    '--config.data.stored_size=32',
    '--config.model.name=cnn_bn',
    '--config.train.batch_size=8',
    '--config.train.num_epochs=1',
    '--config.train.max_steps=2',
    '--config.eval.batch_size=8',
    '--config.eval.bootstrap=20',
    '--config.eval.shortcut=False',
    '--config.eval.tta=False',
    '--config.checkpoint.async_save=False',
    '--config.optim.warmup_epochs=0',
    # The run's own report is not read: the rows come from launch.predict and jax_robustness.
    *train_helpers.config_flags(train_helpers.LEAN_REPORT),
  ]
  args = [
    f'--manual_dir={folder}',
    f'--eval_dir={external}',
    f'--out={out}',
    '--budget_s=400',
    '--torch_epochs=1',
    '--torch_image_size=32',
    '--torch_batch=8',
  ] + [f'--jax_override={a}' for a in jax]
  r = train_helpers.run_cli('launch.benchmark_quality', *args, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:] + (out / 'jaxcxr.log').read_text()[-2000:]
  summary = json.loads((out / 'benchmark_quality.json').read_text())
  jax_r, torch_r = summary['rows']
  assert (jax_r['name'], torch_r['name']) == ('jaxcxr', 'torchvision')
  assert jax_r['num_test'] == torch_r['num_test'] == 9  # the external films, 3 per class
  splits = json.loads((out / 'splits.json').read_text())
  assert len(splits['train']) == 3 * 12 and len(splits['test']) == 9
  assert all(p.startswith(str(external)) for p, _ in splits['test'])
  for r_ in (jax_r, torch_r):
    assert 0.0 <= r_['macro_f1'] <= 1.0 and r_['within_budget'] and r_['train_img_s'] > 0
    lo, hi = r_['macro_f1_ci']
    assert lo <= r_['macro_f1'] <= hi
  assert '| jaxcxr |' in r.stdout and '| torchvision |' in r.stdout
  # Both sides' robustness sections: every perturbation of the same 9 films.
  for r_ in (jax_r, torch_r):
    assert set(r_['robustness']['perturbations']) == set(robustness.PERTURBATIONS)
    assert r_['robustness']['images'] == 9
  assert 'Robustness (' in r.stdout and '| clean |' in summary['robustness_table']
