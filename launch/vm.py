r"""Runs a config or a sweep on an accelerator VM: prints the commands (default) or runs them.

  # one GPU VM over ssh (CUDA 12 build of JAX):
  python -m launch.vm --target=gpu --name=me@gpu-vm --config configs/densenet201.py:bf16 \
      --workdir /home/me/workdirs/dn201 --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  # one TPU VM:
  python -m launch.vm --target=tpu --name=my-v5e --zone=us-west4-a \
      --config configs/densenet201.py:bf16 --workdir workdirs/dn201 \
      --stage=gs://my-bucket/COVID-19_Radiography_Dataset=/data/cxr \
      --config.data.manual_dir=/data/cxr
  # a multi-host TPU slice (every worker, JAXCXR_DISTRIBUTED=1), a sweep file:
  python -m launch.vm --target=tpu_slice --name=my-v4-32 --zone=us-central2-b \
      --config configs/sweeps/seed_models.py --workdir /mnt/shared/seed_models --dry_run=false

Add --dry_run=false to execute (gcloud / ssh / scp must be installed and authenticated). A file
with `get_hyper` is run with launch.sweep on the VM, anything else with launch.train. `--config.k=v`
flags (the `=` form) are passed through to the run unchanged. See jaxcxr/tools/vm.py for what the
remote script does.
"""

import subprocess
import sys

from absl import flags

from jaxcxr.tools import sweep, vm
from jaxcxr.training import errors
from launch import cli

_TARGET = flags.DEFINE_enum(
  'target', None, vm.TARGETS, 'gpu (ssh), tpu (one TPU VM) or tpu_slice (multi-host, --worker=all).'
)
_NAME = flags.DEFINE_string('name', None, 'gpu: [user@]host; tpu/tpu_slice: the TPU VM name.')
_ZONE = flags.DEFINE_string('zone', '', 'TPU zone, e.g. us-central2-b.')
_PROJECT = flags.DEFINE_string('project', '', "GCP project (default: gcloud's).")
_CONFIG = flags.DEFINE_string('config', None, 'Config or sweep file[:arg].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir on the VM (relative: under ~/jaxcxr).')
_SOURCE = flags.DEFINE_enum(
  'source',
  'copy',
  ('copy', 'git'),
  'copy: git archive HEAD + scp; git: clone --repo_url at --ref on the VM.',
)
_REPO_URL = flags.DEFINE_string('repo_url', '', 'Repository URL for --source=git.')
_REF = flags.DEFINE_string('ref', 'main', 'Branch, tag or commit for --source=git.')
_CUDA = flags.DEFINE_enum('cuda', '12', ('12', '13'), 'GPU: jax[cuda12] or jax[cuda13].')
_JAX_VERSION = flags.DEFINE_string(
  'jax_version',
  None,
  'JAX version to install (default: the one requirements.txt pins; "" = latest).',
)
_PYTHON = flags.DEFINE_enum(
  'python', 'uv', ('uv', 'system'), "uv: a Python 3.11 venv made by uv; system: the VM's python3."
)
_STAGE = flags.DEFINE_multi_string('stage', [], 'gs://src=/dst copied to each VM before the run.')
_DETACH = flags.DEFINE_bool('detach', False, 'Run in the background (nohup); log ~/jaxcxr-run.log.')
_DRY_RUN = flags.DEFINE_bool('dry_run', True, 'Print the commands only (default).')
flags.mark_flags_as_required(['target', 'name', 'config', 'workdir'])

_EXIT_COMMAND_NOT_FOUND = 127  # what a shell returns for a command it cannot run


def main(argv):
  overrides = argv[1:]
  try:
    plan = vm.Plan(
      target=_TARGET.value,
      name=_NAME.value,
      config=_CONFIG.value,
      workdir=_WORKDIR.value,
      overrides=tuple(overrides),
      zone=_ZONE.value,
      project=_PROJECT.value,
      source=_SOURCE.value,
      repo_url=_REPO_URL.value,
      ref=_REF.value,
      cuda=_CUDA.value,
      jax_version=(
        vm.read_pinned_jax_version() if _JAX_VERSION.value is None else _JAX_VERSION.value
      ),
      python=_PYTHON.value,
      stage=tuple(_STAGE.value),
      detach=_DETACH.value,
      is_sweep=vm.is_sweep_file(_CONFIG.value),
    )
    cmds = vm.commands(plan)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  for note in vm.notes(plan):
    print(f'# note: {note}', file=sys.stderr)
  if _DRY_RUN.value:
    print(vm.format_commands(cmds))
    print('# dry run: nothing was executed; add --dry_run=false to run these.', file=sys.stderr)
    return
  for argv_ in cmds:
    print('+ ' + sweep.shell_join(argv_), file=sys.stderr)
    try:
      rc = subprocess.run(argv_, check=False).returncode
    except OSError as e:  # e.g. gcloud not installed
      cli.fail(e, _EXIT_COMMAND_NOT_FOUND)
    if rc:
      print(f'error: exit status {rc}', file=sys.stderr)
      sys.exit(rc)


def parse_flags(argv):
  """absl parses everything but `--config.k=v`, which are passed through to the run."""
  absl_argv, overrides = sweep.split_config_flags(argv)
  return flags.FLAGS(absl_argv) + overrides


if __name__ == '__main__':
  cli.run(main, flags_parser=parse_flags)
