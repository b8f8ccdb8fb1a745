"""launch/prepare_data: summary table on success, a clear one-line error (no traceback) on failure,
and the re-prepare command a settings mismatch prints is one that works.

The CLI runs in a subprocess: absl launchers define flags at import, and two of them imported
into one pytest process would clash.
"""

import os
import shlex
import subprocess
from pathlib import Path

from jaxcxr.training import errors
from tests import warm
from tests.data import helpers

REPO = Path(__file__).resolve().parents[2]
TINY = ['--config', str(REPO / 'configs' / 'tiny.py')]


def _main(*argv) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  return warm.run_module('launch.prepare_data', argv, env=env, cwd=REPO, timeout=300)


def _rows(stdout: str) -> list[list[str]]:
  return [line.split() for line in stdout.splitlines()]


def test_prepare_cli_summary_bad_file_and_reprepare_command(tmp_path):
  folder = helpers.make_folder(
    tmp_path / 'kaggle', {'COVID': 5, 'Normal': 5, 'Viral Pneumonia': 5}, size=16
  )
  (folder / 'Normal' / 'images' / 'broken.png').write_bytes(b'')
  common = [
    *TINY,
    '--config.data.source=folder',
    f'--config.data.manual_dir={folder}',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    '--config.data.image_size=16',
  ]
  r = _main(*common)
  assert r.returncode == errors.EXIT_USAGE, r.stderr
  assert 'Traceback' not in r.stderr
  assert 'error: 1 unusable image file(s)' in r.stderr
  assert 'Normal/images/broken.png: the file is empty (0 bytes)' in r.stderr
  assert '--config.data.on_bad_image=skip' in r.stderr
  skip = [*common, '--config.data.on_bad_image=skip']
  r = _main(*skip, '--config.data.val_fraction=0.2', '--config.data.test_fraction=0.2')
  assert r.returncode == 0, r.stderr
  assert ['COVID', '3', '1', '1', '5'] in _rows(r.stdout)
  assert ['total', '9', '3', '3', '15'] in _rows(r.stdout)
  assert 'skipped bad files: 1' in r.stdout
  assert 'skipped Normal/images/broken.png: the file is empty (0 bytes)' in r.stdout
  # Other split settings on the same data_dir: refused, with a command that re-prepares them.
  r = _main(*skip, '--config.data.val_fraction=0.4', '--config.data.test_fraction=0.2')
  assert r.returncode == errors.EXIT_USAGE and 'Traceback' not in r.stderr, r.stderr
  assert 'settings.val_fraction: prepared 0.2, requested 0.4' in r.stderr
  lines = r.stderr.splitlines()
  command = lines[lines.index('Re-prepare it with:') + 1].strip()
  argv = shlex.split(command)
  assert argv[:3] == ['python', '-m', 'launch.prepare_data'] and argv[-1] == '--overwrite'
  r = _main(*argv[3:])
  assert r.returncode == 0, r.stderr
  assert ['total', '6', '6', '3', '15'] in _rows(r.stdout)  # 0.4 of 5 per class -> 2 each


def test_prepare_cli_needs_a_source_and_prepares_phantoms(tmp_path):
  r = _main(*TINY, '--config.data.source=folder', f'--config.data.data_dir={tmp_path}')
  assert r.returncode == errors.EXIT_USAGE and 'Traceback' not in r.stderr, r.stderr
  assert 'config.data.manual_dir is empty' in r.stderr
  assert '--config.data.manual_dir=PATH' in r.stderr
  r = _main(*TINY, f'--config.data.data_dir={tmp_path}')  # tiny: 16 phantoms per class
  assert r.returncode == 0, r.stderr
  assert 'cxr_phantom/3class in ' in r.stdout
  assert ['total', '36', '6', '6', '48'] in _rows(r.stdout)
