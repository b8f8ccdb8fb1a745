"""Sweeps: hyper combinators, trial names and commands, status and resume; the model configs."""

import json
import os
import subprocess
import time

import pytest
from absl import flags
from ml_collections import config_flags

from jaxcxr.tools import compare, sweep
from jaxcxr.training import config_checks
from tests import train_helpers, warm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = sweep.Hyper()
MODEL_CONFIGS = ('vgg19', 'resnet101', 'densenet201', 'scratch_cnn')


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # config paths are relative to the repository root


# ----------------------------------------------------------------------------- combinators


def test_product_chain_zip_fixed():
  p = H.product([H.sweep('a', [1, 2]), H.sweep('b', ['x', 'y', 'z'])])
  assert p == [
    {'a': 1, 'b': 'x'},
    {'a': 1, 'b': 'y'},
    {'a': 1, 'b': 'z'},
    {'a': 2, 'b': 'x'},
    {'a': 2, 'b': 'y'},
    {'a': 2, 'b': 'z'},
  ]
  assert H.chain([H.sweep('a', [1]), H.sweep('b', [2, 3])]) == [{'a': 1}, {'b': 2}, {'b': 3}]
  assert H.zip([H.sweep('a', [1, 2]), H.sweep('b', [3, 4])]) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  assert H.zip([H.sweep('a', [1, 2]), H.fixed('s', 0, length=2)]) == [
    {'a': 1, 's': 0},
    {'a': 2, 's': 0},
  ]
  nested = H.product(
    [
      H.chain([H.sweep('m', ['v']), H.zip([H.sweep('m', ['r']), H.sweep('lr', [0.1])])]),
      H.sweep('seed', [0, 1]),
    ]
  )
  assert len(nested) == 4 and nested[3] == {'m': 'r', 'lr': 0.1, 'seed': 1}
  assert H.chainit is H.chain and H.zipit is H.zip  # big_vision spellings


def test_combinator_errors():
  with pytest.raises(ValueError, match=r'equal length, got lengths \[2, 3\]'):
    H.zip([H.sweep('a', [1, 2]), H.sweep('b', [1, 2, 3])])
  with pytest.raises(ValueError, match="sets 'a' twice"):
    H.product([H.sweep('a', [1]), H.sweep('a', [2])])


# ----------------------------------------------------------------------------- seed_models

SEED_TRIALS = [(m, s) for m in MODEL_CONFIGS for s in ('oversample', 'none')]


def test_seed_models_expands_to_eight_named_trials(tmp_path):
  base, hypers = sweep.load_trials('configs/sweeps/seed_models.py:runlocal')
  assert base == 'configs/densenet201.py:runlocal'
  assert [(h['config'], h['data.sampling']) for h in hypers] == [
    (f'configs/{m}.py:runlocal', s) for m, s in SEED_TRIALS
  ]
  sweep.check_overrides(base, hypers)
  trials = sweep.make_trials(base, hypers, str(tmp_path))
  assert [t.name for t in trials] == [
    f'{i:03d}-config={m},data.sampling={s}' for i, (m, s) in enumerate(SEED_TRIALS)
  ]
  t = trials[3]
  assert t.command == (
    'python',
    '-m',
    'launch.train',
    '--config',
    'configs/resnet101.py:runlocal',
    '--workdir',
    str(tmp_path / '003-config=resnet101,data.sampling=none'),
    '--config.data.sampling=none',
  )
  # Without an arg, the full configs.
  _, full = sweep.load_trials('configs/sweeps/seed_models.py')
  assert full[0]['config'] == 'configs/vgg19.py'


def test_trial_names_are_sanitised_and_bounded():
  keys = ['model.name', 'optim.learning_rate', 'data.manual_dir']
  name = sweep.trial_name(
    7,
    {'model.name': 'vgg19', 'optim.learning_rate': 1e-4, 'data.manual_dir': '/data/my set:1'},
    keys,
  )
  assert name == '007-model.name=vgg19,optim.learning_rate=0.0001,data.manual_dir=_data_my_set_1'
  long = sweep.trial_name(12, {'data.manual_dir': '/x' * 80}, ['data.manual_dir'])
  assert long.startswith('012-data.manual_dir=_x_x') and len(long) == 4 + 80 + 9
  assert long == sweep.trial_name(12, {'data.manual_dir': '/x' * 80}, ['data.manual_dir'])
  assert sweep.varying_keys([{'a': 1, 'b': 2}, {'a': 1, 'b': 3}, {'a': 1}]) == ['b']
  assert sweep.varying_keys([{'a': 1, 'b': 2}]) == ['a', 'b']


def test_override_flags_parse_back_through_config_flags():
  """The command's --config.k=v flags give back exactly the trial's values (all types)."""
  overrides = {
    'optim.learning_rate': 1e-4,
    'optim.backbone_lr_mult': 0.0,
    'seed': 3,
    'data.sampling': 'none',
    'data.augment.hflip': True,
    'data.augment.zoom': (0.8, 1.25),
    'model.name': 'vgg11_bn',
    'train.max_steps': 7,
  }
  argv = sweep.train_command('configs/densenet201.py:runlocal', '/tmp/w', overrides)
  fv = flags.FlagValues()
  cli = ['prog', '--config', argv[4], *argv[7:]]  # overrides are found in sys_argv
  config_flags.DEFINE_config_file(
    'config', None, '', flag_values=fv, lock_config=True, sys_argv=cli
  )
  fv(cli)
  c = fv.config
  for key, value in overrides.items():
    node = c
    for part in key.split('.'):
      node = node[part]
    assert node == value and type(node) is type(value), (key, node, value)
  assert c.data.image_size == 32  # the rest of the runlocal config is untouched


def test_bad_overrides_name_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"Trial 1 .*'optim.lr' is not a key of configs/tiny.py"):
    sweep.check_overrides('configs/tiny.py', [{'seed': 1}, {'optim.lr': 1e-3}])
  with pytest.raises(ValueError, match=r'data\.sampling=3 has the wrong type'):
    sweep.check_overrides('configs/tiny.py', [{'data.sampling': 3}])
  with pytest.raises(ValueError, match="conflicts with the sweep, which sets 'seed'"):
    sweep.make_trials('configs/tiny.py', [{'seed': 1}], str(tmp_path), ['--config.seed=2'])


def test_sweep_file_as_its_own_base_config(tmp_path):
  f = tmp_path / 'own.py'
  f.write_text(
    'from configs import tiny\n'
    'def get_config(arg=""):\n  return tiny.get_config()\n'
    'def get_hyper(hyper):\n'
    '  return hyper.sweep("config.seed", [0, 1])\n'
  )
  base, hypers = sweep.load_trials(f'{f}:x')
  assert base == f'{f}:x' and hypers == [{'seed': 0}, {'seed': 1}]
  trials = sweep.make_trials(base, hypers, '/w', ['--config.data.image_size=48'])
  assert trials[1].command == (
    'python',
    '-m',
    'launch.train',
    '--config',
    f'{f}:x',
    '--workdir',
    '/w/001-seed=1',
    '--config.data.image_size=48',
    '--config.seed=1',
  )


# ----------------------------------------------------------------------------- status & running


def _cli(module: str, *args) -> subprocess.CompletedProcess:
  """`python -m module args` (warm, tests/warm.py; a sweep's own trainings start cold)."""
  return warm.run_module(module, args, env=os.environ, cwd=REPO, timeout=900)


def _fake_runner(outcomes, calls):
  """A runner that 'trains' by writing results.json, or exits with a given status."""

  def run(argv, log_path):
    workdir = argv[argv.index('--workdir') + 1]
    calls.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write('{}')
    with open(log_path, 'a') as f:
      f.write('trained\n')
    rc = outcomes.get(os.path.basename(workdir)[:3], 0)
    if rc == 0:
      with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump({'summary': {'test_macro_f1': 0.5}}, f)
    return rc

  return run


def test_run_trials_skips_finished_records_failures_and_stops_on_preemption(tmp_path):
  hypers = H.sweep('seed', [0, 1, 2, 3])
  trials = sweep.make_trials('configs/tiny.py', hypers, str(tmp_path))
  # Trial 0 already finished; trial 1 has a checkpoint from an interrupted run.
  os.makedirs(trials[0].workdir)
  with open(os.path.join(trials[0].workdir, 'results.json'), 'w') as f:
    json.dump({'summary': {'test_macro_f1': 0.25}}, f)
  os.makedirs(os.path.join(trials[1].workdir, 'checkpoints'))
  assert [sweep.trial_status(t.workdir) for t in trials] == [
    'finished',
    'interrupted',
    'pending',
    'pending',
  ]

  calls, lines = [], []
  results = sweep.run_trials(
    trials, str(tmp_path), runner=_fake_runner({'001': 2, '002': 75}, calls), echo=lines.append
  )
  assert calls == ['001-seed=1', '002-seed=2']  # 0 skipped; 3 not reached (preempted)
  assert results == {0: 'finished', 1: 'failed', 2: 'interrupted'}
  status = json.loads((tmp_path / 'sweep.json').read_text())['trials']
  assert {k: (v['status'], v['returncode']) for k, v in status.items()} == {
    '000-seed=0': ('finished', None),
    '001-seed=1': ('failed', 2),
    '002-seed=2': ('interrupted', 75),
    '003-seed=3': ('pending', None),
  }
  assert status['001-seed=1']['command'] == list(trials[1].command)
  assert 'resuming' in lines[1] and 'stopping the sweep' in lines[-1]
  assert (tmp_path / 'logs' / '001-seed=1.log').read_text() == 'trained\n'

  # Re-running resumes: the failed and interrupted trials run again, then the last one.
  calls.clear()
  results = sweep.run_trials(
    trials, str(tmp_path), runner=_fake_runner({}, calls), echo=lines.append
  )
  assert calls == ['001-seed=1', '002-seed=2', '003-seed=3']
  assert set(results.values()) == {'finished'}
  # compare sees the four finished trials.
  assert [r['status'] for r in compare.find_runs(str(tmp_path))] == ['finished'] * 4


def test_exit_zero_without_results_is_a_failure(tmp_path):
  assert sweep.status_after_run(0, str(tmp_path)) == 'failed'
  assert sweep.status_after_run(75, str(tmp_path)) == 'interrupted'
  (tmp_path / 'results.json').write_text('{}')
  assert sweep.status_after_run(0, str(tmp_path)) == 'finished'


def test_run_command_streams_output_and_returns_status(tmp_path, capsys):
  log = tmp_path / 'x.log'
  rc = sweep.run_command(['python', '-c', 'import sys; print("hello"); sys.exit(3)'], str(log))
  assert rc == 3 and log.read_text() == 'hello\n' and 'hello' in capsys.readouterr().out


def test_launch_sweep_dry_run_prints_commands_and_runs_nothing(tmp_path):
  r = _cli(
    'launch.sweep',
    '--config',
    'configs/sweeps/seed_models.py:runlocal',
    '--workdir',
    tmp_path / 's',
    '--dry_run',
    '--config.eval.bootstrap=10',
  )
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert len(lines) == 16 and lines[0] == '# 000-config=vgg19,data.sampling=oversample [pending]'
  assert lines[15] == (
    f'python -m launch.train --config configs/scratch_cnn.py:runlocal '
    f'--workdir {tmp_path}/s/007-config=scratch_cnn,data.sampling=none '
    f'--config.eval.bootstrap=10 --config.data.sampling=none'
  )
  assert not (tmp_path / 's').exists()
  bad = _cli(
    'launch.sweep',
    '--config',
    'configs/sweeps/seed_models.py',
    '--workdir',
    tmp_path,
    '--dry_run',
    '--config.data.sampling=none',
  )
  assert bad.returncode == 2 and 'conflicts with the sweep' in bad.stderr


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize('name', MODEL_CONFIGS)
def test_model_configs_runlocal_validate_and_full_configs_match_the_recipe(name):
  local = sweep.load_config(f'configs/{name}.py:runlocal')
  config_checks.validate_config(local, num_devices=1, num_processes=1)
  assert (local.data.source, local.data.image_size, local.model.pretrained) == ('phantom', 32, '')
  assert (local.train.num_epochs, local.train.max_steps) == (1, 3)
  # Small stand-ins on CPU (the real architectures take minutes to compile; configs/densenet201.py).
  assert local.model.name == {'vgg19': 'cnn_small'}.get(name, 'cnn_bn')
  full = sweep.load_config(f'configs/{name}.py')
  assert full.is_locked
  assert (full.data.source, full.data.image_size, full.train.label_smoothing) == (
    'folder',
    224,
    0.1,
  )
  assert (full.data.sampling, full.early_stopping.metric) == ('oversample', 'val_loss')
  assert (full.optim.name, full.optim.schedule, full.optim.warmup_epochs) == (
    'adamw',
    'cosine',
    1.0,
  )
  if name == 'scratch_cnn':
    assert (full.model.name, full.model.pretrained) == ('cnn_bn', '')
  else:
    assert full.model.name == name
    assert full.model.pretrained.endswith(f'/.cache/jaxcxr/weights/{name}') or os.environ.get(
      'JAXCXR_WEIGHTS_DIR'
    )
    assert full.optim.learning_rate * full.optim.backbone_lr_mult == pytest.approx(
      5e-5 if name == 'vgg19' else 1e-4
    )
  assert sweep.load_config(f'configs/{name}.py:bf16').model.dtype == 'bfloat16'
  with pytest.raises(ValueError, match='unknown arg'):
    sweep.load_config(f'configs/{name}.py:fast')


# ----------------------------------------------------------------------------- end to end

_TWO_TRIALS = """
from configs.sweeps import seed_models

def get_config(arg=''):
  return seed_models.get_config(arg)

def get_hyper(hyper, arg=''):
  # Two of the seed sweep's eight trials: both stand-in models, both sampling modes.
  return hyper.zip([
      hyper.sweep('config', [seed_models._file(m, arg) for m in ('vgg19', 'scratch_cnn')]),
      hyper.sweep('data.sampling', ['oversample', 'none'])])
"""


@pytest.mark.slow
def test_runlocal_sweep_end_to_end(tmp_path):
  """Two trials of the runlocal seed sweep train on phantom data, compare tabulates both, a re-run
  skips both. (The eight-trial listing is test_launch_sweep_dry_run_prints_commands_and_runs_
  nothing; every model config's runlocal is validated above; more trials add time, not paths.)"""
  sweep_file = tmp_path / 'two_trials.py'
  sweep_file.write_text(_TWO_TRIALS)
  workdir = tmp_path / 'seed'
  args = ['--config', f'{sweep_file}:runlocal', '--workdir', workdir]
  # Overrides after the flags go to every trial; the trials' reports are not read here.
  args += train_helpers.config_flags(train_helpers.LEAN_REPORT)
  t0 = time.time()
  r = _cli('launch.sweep', *args)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  print(f'sweep: {time.time() - t0:.0f} s')
  r = _cli('launch.compare', '--workdir', workdir)
  assert r.returncode == 0, r.stderr
  print(r.stdout)
  import csv  # pylint: disable=g-import-not-at-top

  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 and {r['status'] for r in rows} == {'finished'}
  assert sorted(r['data.sampling'] for r in rows) == ['none', 'oversample']
  for row in rows:
    assert 0.0 <= float(row['accuracy']) <= 1.0 and 0.0 <= float(row['macro_f1']) <= 1.0
    assert int(row['steps']) == 3 and float(row['wall_time_s']) > 0
  assert (workdir / 'comparison.png').stat().st_size > 10_000
  # A second run finds everything finished and trains nothing.
  r = _cli('launch.sweep', *args)
  assert r.returncode == 0 and r.stdout.count('finished, skipped.') == 2
