"""Commands that run a config or a sweep on accelerator VMs (GPU over ssh, TPU VM, TPU slice).

Everything here builds argv lists and shell text; nothing runs. `launch/vm.py` prints them
(default) or runs them. The plan for every target:

  1. put the code on the VM(s): `git archive HEAD` copied with scp (`source='copy'`, the default:
     needs no remote repository, ships the committed tree only) or `git clone` + checkout of a ref
     (`source='git'`);
  2. on each VM, in one `bash -c` script: a Python 3.11 virtualenv (made with uv, which fetches
     3.11 where the image has an older Python, e.g. TPU VM images ship 3.10), `pip install -r
     requirements.txt` plus the accelerator build of JAX at the pinned version (`jax[tpu]`,
     `jax[cuda12]` or `jax[cuda13]`), optional `gcloud storage rsync` of data/weights from GCS;
  3. `python -m launch.train` (or `launch.sweep` for a sweep file) with the given --config.k=v
     flags; on a multi-host slice with JAXCXR_DISTRIBUTED=1 on every worker (`--worker=all`), so
     `jax.distributed.initialize()` auto-detects the slice (see jaxcxr/distributed.py).
"""

import dataclasses
import os
import re
import shlex
from collections.abc import Sequence

TARGETS = ('gpu', 'tpu', 'tpu_slice')
REMOTE_DIR = '~/jaxcxr'
VENV = '~/jaxcxr-venv'
ARCHIVE = 'jaxcxr-src.tar.gz'
LOG = '~/jaxcxr-run.log'


@dataclasses.dataclass(frozen=True)
class Plan:
  target: str  # one of TARGETS
  name: str  # GPU: [user@]host; TPU: the TPU VM / slice name
  config: str  # config or sweep file[:arg]
  workdir: str  # on the VM (or gs://...)
  overrides: tuple[str, ...] = ()  # --config.k=v flags, passed through verbatim
  zone: str = ''
  project: str = ''
  source: str = 'copy'  # 'copy' (git archive + scp) or 'git' (clone on the VM)
  repo_url: str = ''
  ref: str = 'main'
  cuda: str = '12'  # GPU: '12' or '13'
  jax_version: str = ''  # '' -> unpinned (latest)
  python: str = 'uv'  # 'uv' (Python 3.11 venv) or 'system' (the VM's python3)
  stage: tuple[str, ...] = ()  # 'gs://src=/dst' (or =~/dst) copied to each VM first
  detach: bool = False  # nohup the run; output in ~/jaxcxr-run.log
  is_sweep: bool = False


def check(plan: Plan) -> None:
  """Raises ValueError naming the flag to fix."""
  errors = []
  if plan.target not in TARGETS:
    errors.append(f'--target={plan.target!r}: expected one of {TARGETS}.')
  if not plan.name:
    errors.append('--name: the VM ([user@]host for gpu, the TPU name for tpu/tpu_slice).')
  if plan.target in ('tpu', 'tpu_slice') and not plan.zone:
    errors.append('--zone is required for TPU VMs (e.g. us-central2-b).')
  if plan.source not in ('copy', 'git'):
    errors.append(f'--source={plan.source!r}: expected copy or git.')
  if plan.source == 'git' and not plan.repo_url:
    errors.append('--source=git needs --repo_url (a URL the VM can clone).')
  if plan.cuda not in ('12', '13'):
    errors.append(f'--cuda={plan.cuda!r}: expected 12 or 13.')
  if plan.python not in ('uv', 'system'):
    errors.append(f'--python={plan.python!r}: expected uv or system.')
  for s in plan.stage:
    if not re.fullmatch(r'gs://[^=]+=[^=]+', s):
      errors.append(f'--stage={s!r}: expected gs://bucket/path=/path/on/vm.')
  for o in plan.overrides:
    if not (o.startswith('--config.') and '=' in o):
      errors.append(f'{o!r}: pass-through flags are --config.key=value.')
  if errors:
    raise ValueError('Invalid VM launch:\n  ' + '\n  '.join(errors))


def jax_requirement(plan: Plan) -> str:
  """'jax[tpu]==0.10.2', 'jax[cuda12]==0.10.2', ... (unpinned when jax_version is '')."""
  extra = f'cuda{plan.cuda}' if plan.target == 'gpu' else 'tpu'
  return f'jax[{extra}]' + (f'=={plan.jax_version}' if plan.jax_version else '')


def pinned_jax_version(requirements_text: str) -> str:
  """The jax version pinned in requirements.txt ('jax[cpu]==0.10.2' -> '0.10.2'), or ''."""
  m = re.search(r'^jax(?:\[[^\]]*\])?==([^\s;#]+)', requirements_text, re.M)
  return m.group(1) if m else ''


def run_line(plan: Plan, python: str) -> str:
  """The training (or sweep) command line run on the VM (`python` is inserted unquoted)."""
  module = 'launch.sweep' if plan.is_sweep else 'launch.train'
  return ' '.join(
    [
      python,
      '-m',
      module,
      '--config',
      quote(plan.config),
      '--workdir',
      _home(plan.workdir),
      *map(quote, plan.overrides),
    ]
  )


def quote(s: str) -> str:
  """Shell quoting that prefers double quotes, so the script nests in one layer of single quotes
  (the local shell's) when printed; falls back to shlex.quote for $, `, \\, ", ! and '."""
  if shlex.quote(s) == s:
    return s
  if not set(s) & set('$`\\"!\''):
    return f'"{s}"'
  return shlex.quote(s)


def _home(path: str) -> str:
  """'~/x' quoted so the remote shell still expands ~ ("$HOME"/x)."""
  return '"$HOME"' + quote(path[1:]) if path.startswith('~/') else quote(path)


def remote_script(plan: Plan) -> str:
  """The bash script each VM runs (one per worker on a slice)."""
  q = quote
  lines = ['set -euo pipefail']
  if plan.source == 'copy':
    lines += [
      f'mkdir -p {_home(REMOTE_DIR)}',
      f'tar -xzf {_home("~/" + ARCHIVE)} -C {_home(REMOTE_DIR)}',
    ]
  else:
    lines += [
      f'[ -d {_home(REMOTE_DIR + "/.git")} ] || git clone -q {q(plan.repo_url)} '
      f'{_home(REMOTE_DIR)}',
      f'git -C {_home(REMOTE_DIR)} fetch -q origin {q(plan.ref)}',
      f'git -C {_home(REMOTE_DIR)} checkout -q FETCH_HEAD',
    ]
  lines.append(f'cd {_home(REMOTE_DIR)}')
  jax_req = q(jax_requirement(plan))
  if plan.python == 'uv':
    python = f'{_home(VENV)}/bin/python'
    # uv fetches Python 3.11 where the image has an older one; pip --user fails on images with an
    # externally managed Python (Ubuntu 24.04), hence the installer fallback.
    lines += [
      'export PATH="$HOME/.local/bin:$PATH"',
      'command -v uv >/dev/null || python3 -m pip install -q --user uv || '
      'curl -LsSf https://astral.sh/uv/install.sh | sh',
      f'[ -x {python} ] || uv venv -q --python 3.11 {_home(VENV)}',
      f'uv pip install -q --python {python} -r requirements.txt {jax_req}',
    ]
  else:
    python = 'python3'
    lines.append(f'python3 -m pip install -q -r requirements.txt {jax_req}')
  for s in plan.stage:
    src, dst = s.split('=', 1)
    lines += [f'mkdir -p {_home(dst)}', f'gcloud storage rsync -r {q(src)} {_home(dst)}']
  env = 'JAXCXR_DISTRIBUTED=1 ' if plan.target == 'tpu_slice' else ''
  run = run_line(plan, python)
  if plan.detach:
    lines.append(f'{env}nohup {run} > {_home(LOG)} 2>&1 < /dev/null &')
    lines.append(f'echo "started in the background; log: {LOG}"')
  else:
    lines.append(f'{env}{run}')
  return '\n'.join(lines)


def _tpu_flags(plan: Plan) -> list[str]:
  flags = ['--zone', plan.zone]
  if plan.project:
    flags += ['--project', plan.project]
  flags.append('--worker=all' if plan.target == 'tpu_slice' else '--worker=0')
  return flags


def commands(plan: Plan, archive_path: str = '/tmp/' + ARCHIVE) -> list[list[str]]:
  """The local commands, in order: [archive, copy,] run. Each is an argv list."""
  check(plan)
  out = []
  # The remote login shell (bash on GCP images) runs the script; `set -euo pipefail` needs bash.
  remote_cmd = remote_script(plan)
  if plan.source == 'copy':
    out.append(['git', 'archive', '--format=tar.gz', '-o', archive_path, 'HEAD'])
    if plan.target == 'gpu':
      out.append(['scp', archive_path, f'{plan.name}:{ARCHIVE}'])
    else:
      out.append(
        [
          'gcloud',
          'compute',
          'tpus',
          'tpu-vm',
          'scp',
          archive_path,
          f'{plan.name}:{ARCHIVE}',
          *_tpu_flags(plan),
        ]
      )
  if plan.target == 'gpu':
    out.append(['ssh', plan.name, remote_cmd])
  else:
    out.append(
      [
        'gcloud',
        'compute',
        'tpus',
        'tpu-vm',
        'ssh',
        plan.name,
        *_tpu_flags(plan),
        f'--command={remote_cmd}',
      ]
    )
  return out


def notes(plan: Plan) -> list[str]:
  """Warnings worth printing with the commands."""
  out = []
  if plan.target == 'tpu_slice' and not plan.workdir.startswith(('gs://', '/mnt/', '/gcs/')):
    out.append(
      f'--workdir={plan.workdir}: on a multi-host slice every worker must see the same '
      'workdir (checkpoints are written collectively): use a shared mount (Filestore/NFS, '
      'or a gcsfuse bucket under /mnt or /gcs).'
    )
  if plan.workdir.startswith('gs://'):
    out.append(
      'gs:// workdirs need jaxcxr.training to write config.json/results.json through a '
      'gs-aware file API; with plain open() they fail. Prefer a gcsfuse mount path.'
    )
  if plan.source == 'copy':
    out.append(
      'source=copy ships the committed tree (git archive HEAD); commit local changes first.'
    )
  return out


def is_sweep_file(spec: str) -> bool:
  """True when the file part of 'FILE[:arg]' defines get_hyper (a sweep, run by launch.sweep)."""
  path = spec.split('.py:', 1)[0] + '.py' if '.py:' in spec else spec
  with open(path) as f:
    return re.search(r'^def get_hyper\(', f.read(), re.M) is not None


def read_pinned_jax_version(repo_root: str = '.') -> str:
  with open(os.path.join(repo_root, 'requirements.txt')) as f:
    return pinned_jax_version(f.read())


def format_commands(cmds: Sequence[Sequence[str]]) -> str:
  return '\n'.join(shlex.join(c) for c in cmds)
