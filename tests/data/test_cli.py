"""launch/prepare_data: summary table on success, a clear one-line error (no traceback) on failure."""

from absl import flags
from absl.testing import flagsaver
import pytest

from launch import prepare_data
from tests.data import helpers


def _main(*argv):
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['prepare_data', *argv])
    prepare_data.main([])


def test_prepare_cli_summary_and_bad_file(tmp_path, capsys):
  folder = helpers.make_folder(tmp_path / 'kaggle',
                               {'COVID': 5, 'Normal': 5, 'Viral Pneumonia': 5}, size=16)
  (folder / 'Normal' / 'images' / 'broken.png').write_bytes(b'')
  common = [f'--manual_dir={folder}', f'--data_dir={tmp_path / "tfds"}', '--image_size=16']
  with pytest.raises(SystemExit) as e:  # absl prints the message, exit status 1, no traceback
    _main(*common)
  msg = str(e.value.code)
  assert msg.startswith('error: 1 unusable image file(s)')
  assert 'Normal/images/broken.png: the file is empty (0 bytes)' in msg
  assert '--on_bad_image=skip' in msg
  _main(*common, '--on_bad_image=skip', '--val_fraction=0.2', '--test_fraction=0.2')
  lines = capsys.readouterr().out.splitlines()
  assert ['COVID', '3', '1', '1', '5'] in [l.split() for l in lines]
  assert ['total', '9', '3', '3', '15'] in [l.split() for l in lines]
  out = '\n'.join(lines)
  assert 'skipped bad files: 1' in out
  assert 'skipped Normal/images/broken.png: the file is empty (0 bytes)' in out


def test_prepare_cli_needs_a_source(tmp_path):
  with pytest.raises(SystemExit, match='pass --manual_dir=<Kaggle folder> or --phantom'):
    _main(f'--data_dir={tmp_path}')
