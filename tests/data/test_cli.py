"""launch/prepare_data: summary table on success, a clear one-line error (no traceback) on failure.

The CLI runs in a subprocess: absl launchers define flags at import, and two of them imported
into one pytest process would clash.
"""

import os
import subprocess
import sys
from pathlib import Path

from tests.data import helpers

REPO = Path(__file__).resolve().parents[2]


def _main(*argv) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'launch.prepare_data', *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_prepare_cli_summary_and_bad_file(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle',
                               {'COVID': 5, 'Normal': 5, 'Viral Pneumonia': 5}, size=16)
  (folder / 'Normal' / 'images' / 'broken.png').write_bytes(b'')
  common = [f'--manual_dir={folder}', f'--data_dir={tmp_path / "tfds"}', '--image_size=16']
  r = _main(*common)
  assert r.returncode == 1, r.stderr   # absl prints the message, exit status 1, no traceback
  assert 'Traceback' not in r.stderr
  assert 'error: 1 unusable image file(s)' in r.stderr
  assert 'Normal/images/broken.png: the file is empty (0 bytes)' in r.stderr
  assert '--on_bad_image=skip' in r.stderr
  r = _main(*common, '--on_bad_image=skip', '--val_fraction=0.2', '--test_fraction=0.2')
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert ['COVID', '3', '1', '1', '5'] in [l.split() for l in lines]
  assert ['total', '9', '3', '3', '15'] in [l.split() for l in lines]
  assert 'skipped bad files: 1' in r.stdout
  assert 'skipped Normal/images/broken.png: the file is empty (0 bytes)' in r.stdout


def test_prepare_cli_needs_a_source(tmp_path):
  r = _main(f'--data_dir={tmp_path}')
  assert r.returncode != 0
  assert 'pass --manual_dir=<Kaggle folder> or --phantom' in r.stderr
