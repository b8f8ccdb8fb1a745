"""Accelerator-VM launch commands: argv, quoting, workers, JAX builds, flag pass-through.

No cloud is reachable here, so the remote script is also *executed* with bash against stub
`tar`/`uv`/`gcloud`/`git` commands and a stub venv python that records the argv and environment it
was started with: that checks every quoting layer end to end.
"""

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

from jaxcxr.tools import vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRICKY = (
  '--config.data.manual_dir=/data/COVID-19 Radiography Database',
  "--config.model.pretrained=/w/it's here",
  '--config.optim.learning_rate=0.0001',
  '--config.data.augment.zoom=(0.8, 1.2)',
)


def _plan(**kw):
  base = dict(
    target='tpu_slice',
    name='cxr-v4-32',
    config='configs/densenet201.py:bf16',
    workdir='/mnt/shared/dn201',
    overrides=TRICKY,
    zone='us-central2-b',
    jax_version='0.10.2',
  )
  base.update(kw)
  return vm.Plan(**base)


def test_slice_commands_use_all_workers():
  cmds = vm.commands(_plan(project='my-proj'))
  assert cmds[0] == ['git', 'archive', '--format=tar.gz', '-o', '/tmp/jaxcxr-src.tar.gz', 'HEAD']
  assert cmds[1] == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'scp',
    '/tmp/jaxcxr-src.tar.gz',
    'cxr-v4-32:jaxcxr-src.tar.gz',
    '--zone',
    'us-central2-b',
    '--project',
    'my-proj',
    '--worker=all',
  ]
  assert cmds[2][:11] == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    'cxr-v4-32',
    '--zone',
    'us-central2-b',
    '--project',
    'my-proj',
    '--worker=all',
  ]
  script = cmds[2][11][len('--command=') :]
  assert script == vm.remote_script(_plan(project='my-proj'))
  last = script.splitlines()[-1]
  assert last.startswith('JAXCXR_DISTRIBUTED=1 "$HOME"/jaxcxr-venv/bin/python -m launch.train ')
  assert '"jax[tpu]==0.10.2"' in script
  # The printed form parses back to the same argv (what --dry_run shows is what would run).
  assert vm.format_commands(cmds) == '\n'.join(shlex.join(c) for c in cmds)
  assert all(shlex.split(shlex.join(c)) == c for c in cmds)


def test_single_tpu_and_gpu_targets():
  tpu = vm.commands(_plan(target='tpu', overrides=()))
  assert '--worker=0' in tpu[2] and '--worker=all' not in tpu[2]
  script = vm.remote_script(_plan(target='tpu', overrides=()))
  assert 'JAXCXR_DISTRIBUTED' not in script  # one host: no jax.distributed

  gpu = _plan(target='gpu', name='me@gpu-vm', zone='', cuda='13', overrides=())
  cmds = vm.commands(gpu)
  assert cmds[1] == ['scp', '/tmp/jaxcxr-src.tar.gz', 'me@gpu-vm:jaxcxr-src.tar.gz']
  assert cmds[2] == ['ssh', 'me@gpu-vm', vm.remote_script(gpu)]
  assert '"jax[cuda13]==0.10.2"' in cmds[2][2]
  assert vm.jax_requirement(_plan(target='gpu', cuda='12', jax_version='')) == 'jax[cuda12]'


def test_git_source_sweep_and_detach():
  plan = _plan(
    source='git',
    repo_url='https://github.com/acme/jaxcxr.git',
    ref='v1.2',
    config='configs/sweeps/seed_models.py',
    is_sweep=True,
    detach=True,
    python='system',
    overrides=(),
    stage=('gs://bkt/cxr=/data/cxr', 'gs://bkt/w/dn=~/.cache/jaxcxr/weights/dn'),
  )
  cmds = vm.commands(plan)
  assert len(cmds) == 1  # nothing to copy
  lines = vm.remote_script(plan).splitlines()
  assert lines[1:4] == [
    '[ -d "$HOME"/jaxcxr/.git ] || git clone -q https://github.com/acme/jaxcxr.git "$HOME"/jaxcxr',
    'git -C "$HOME"/jaxcxr fetch -q origin v1.2',
    'git -C "$HOME"/jaxcxr checkout -q FETCH_HEAD',
  ]
  assert 'python3 -m pip install -q -r requirements.txt "jax[tpu]==0.10.2"' in lines
  assert lines[-6:-2] == [
    'mkdir -p /data/cxr',
    'gcloud storage rsync -r gs://bkt/cxr /data/cxr',
    'mkdir -p "$HOME"/.cache/jaxcxr/weights/dn',
    'gcloud storage rsync -r gs://bkt/w/dn "$HOME"/.cache/jaxcxr/weights/dn',
  ]
  assert lines[-2] == (
    'JAXCXR_DISTRIBUTED=1 nohup python3 -m launch.sweep --config '
    'configs/sweeps/seed_models.py --workdir /mnt/shared/dn201 > '
    '"$HOME"/jaxcxr-run.log 2>&1 < /dev/null &'
  )


@pytest.mark.parametrize(
  ('kw', 'message'),
  [
    ({'target': 'tpu', 'zone': ''}, '--zone is required'),
    ({'target': 'cpu'}, "--target='cpu'"),
    ({'source': 'git'}, '--source=git needs --repo_url'),
    ({'stage': ('/local=/data',)}, '--stage='),
    ({'overrides': ('--seed=1',)}, 'pass-through flags are --config.key=value'),
    ({'cuda': '11'}, "--cuda='11'"),
  ],
)
def test_invalid_plans_name_the_flag(kw, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('[', r'\[')):
    vm.commands(_plan(**kw))


def test_pinned_jax_version_and_sweep_detection():
  assert vm.pinned_jax_version('flax==1\njax[cpu]==0.10.2\njaxlib==0.10.2\n') == '0.10.2'
  assert vm.pinned_jax_version('jax==0.7.1  # comment\n') == '0.7.1'
  assert vm.pinned_jax_version('jaxlib==0.7.1\n') == ''
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    assert vm.read_pinned_jax_version(REPO) == vm.pinned_jax_version(f.read()) != ''
  assert vm.is_sweep_file(os.path.join(REPO, 'configs/sweeps/seed_models.py:runlocal'))
  assert not vm.is_sweep_file(os.path.join(REPO, 'configs/densenet201.py:runlocal'))


def _stub(path, body):
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize('target', ['tpu_slice', 'gpu'])
def test_remote_script_runs_and_passes_flags_through_exactly(tmp_path, target):
  """Runs the ssh command's remote part with bash: stubs record what would be executed."""
  home, bin_dir = tmp_path / 'home', tmp_path / 'bin'
  (home / 'jaxcxr-venv' / 'bin').mkdir(parents=True)
  bin_dir.mkdir()
  log = tmp_path / 'calls.jsonl'
  record = (
    f'python3 -c "import json,os,sys; print(json.dumps([os.path.basename(sys.argv[1])] + '
    f'sys.argv[2:]))" "$0" "$@" >> {log}\n'
  )
  for name in ('tar', 'uv', 'gcloud', 'git'):
    _stub(bin_dir / name, record)
  _stub(
    home / 'jaxcxr-venv' / 'bin' / 'python',
    f"python3 -c \"import json,os,sys; print(json.dumps({{'argv': sys.argv[1:], "
    f"'dist': os.environ.get('JAXCXR_DISTRIBUTED'), 'cwd': os.getcwd()}}))\" \"$@\" "
    f'> {tmp_path}/run.json\n',
  )
  plan = _plan(target=target, name='h', stage=('gs://bkt/cxr=' + str(tmp_path / 'data'),))
  remote = vm.commands(plan)[-1][-1]
  if remote.startswith('--command='):
    remote = remote[len('--command=') :]
  env = {'HOME': str(home), 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
  r = subprocess.run(['bash', '-c', remote], env=env, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  run = json.loads((tmp_path / 'run.json').read_text())
  assert run['argv'] == [
    '-m',
    'launch.train',
    '--config',
    'configs/densenet201.py:bf16',
    '--workdir',
    '/mnt/shared/dn201',
    *TRICKY,
  ]
  assert run['dist'] == ('1' if target == 'tpu_slice' else None)
  assert run['cwd'] == str(home / 'jaxcxr')
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  extra = 'tpu' if target == 'tpu_slice' else 'cuda12'
  assert calls == [
    ['tar', '-xzf', f'{home}/jaxcxr-src.tar.gz', '-C', f'{home}/jaxcxr'],
    [
      'uv',
      'pip',
      'install',
      '-q',
      '--python',
      f'{home}/jaxcxr-venv/bin/python',
      '-r',
      'requirements.txt',
      f'jax[{extra}]==0.10.2',
    ],
    ['gcloud', 'storage', 'rsync', '-r', 'gs://bkt/cxr', str(tmp_path / 'data')],
  ]


def test_launch_vm_dry_run_is_default_and_passes_flags(tmp_path):
  argv = [
    sys.executable,
    '-m',
    'launch.vm',
    '--target=tpu_slice',
    '--name=s',
    '--zone=z',
    '--config',
    'configs/sweeps/seed_models.py',
    '--workdir',
    '/mnt/shared/seed',
    '--config.data.manual_dir=/data/a b',
  ]
  # No gcloud on PATH: executing would fail, so success proves nothing ran.
  env = {**os.environ, 'PATH': os.path.dirname(sys.executable)}
  r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, env=env)
  assert r.returncode == 0, r.stderr
  printed = r.stdout.strip()
  cmds = vm.commands(
    vm.Plan(
      target='tpu_slice',
      name='s',
      zone='z',
      config='configs/sweeps/seed_models.py',
      workdir='/mnt/shared/seed',
      overrides=('--config.data.manual_dir=/data/a b',),
      jax_version=vm.read_pinned_jax_version(REPO),
      is_sweep=True,
    )
  )
  assert printed == vm.format_commands(cmds)
  assert '-m launch.sweep --config configs/sweeps/seed_models.py' in printed
  assert '"--config.data.manual_dir=/data/a b"' in printed
  assert 'dry run: nothing was executed' in r.stderr
  r = subprocess.run(
    [*argv, '--dry_run=false'], cwd=REPO, capture_output=True, text=True, check=False, env=env
  )
  assert r.returncode != 0 and '+ git archive' in r.stderr
