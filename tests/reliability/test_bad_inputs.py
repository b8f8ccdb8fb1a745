"""Bad input through the CLIs (launch.train / predict / evaluate / convert): each must end with a
clear message and the documented exit status, never a bare traceback; plus odd but valid image
modes and sizes, which must decode to the documented grey values.

Already covered elsewhere, and counted by scripts/reliability_report.py rather than repeated here:
tests/data/test_images.py (zero-byte, truncated, text-as-PNG, decompression bomb, RGBA, 16-bit,
palette), tests/data/test_builder.py (bad files named or skipped, missing/empty class folders,
dataset prepared with other settings), tests/data/test_cli.py (prepare_data CLI), tests/
test_weights.py (pickled code refused with no side effect, truncated .pth/.safetensors, wrong arch),
tests/test_convert_cli.py (launch.convert with another architecture's .pth), tests/test_train.py
(bad config values, mistyped key named, non-finite loss).

The CLI runs start together (4 at a time) in one module fixture; each test checks one of them.
"""

import concurrent.futures
import io
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from tests import train_helpers as th
from tests import warm
from tests.data import helpers
from tests.reliability import harness

THREE = {'COVID': 4, 'Normal': 4, 'Viral Pneumonia': 4}

# Unusable files and the reason each failure must give.
BAD_FILES = {
  'zero.png': 'empty (0 bytes)',
  'truncated.png': 'truncated',
  'text.png': 'not an image',
  'page.jpg': 'not an image',
  'bomb.png': 'decompression bomb',
}


def _tiff(array: np.ndarray, mode: str | None = None) -> bytes:
  buf = io.BytesIO()
  (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, 'TIFF')
  return buf.getvalue()


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  im.save(buf, fmt, **kw)
  return buf.getvalue()


def _bad_bytes() -> dict[str, bytes]:
  good = helpers.png_bytes(helpers.random_image(np.random.default_rng(5), 32))
  return {
    'zero.png': b'',
    'truncated.png': good[: len(good) // 2],
    'text.png': b'<html>404 not found</html>',
    'page.jpg': b'<!DOCTYPE html>\n<html>',
    'bomb.png': helpers.png_bomb_header(20000, 20000),
  }


def _odd_images() -> dict[str, tuple[bytes, np.ndarray]]:
  """Odd but valid files -> (bytes, the uint8 grey image the decoder must return)."""
  checker = (np.indices((6, 6)).sum(0) % 2).astype(bool)
  la = np.zeros((4, 4, 2), np.uint8)
  la[..., 0], la[..., 1] = 100, 255
  la[0, 0, 1] = 0  # transparent -> black
  la_want = np.full((4, 4), 100, np.uint8)
  la_want[0, 0] = 0
  cmyk = np.zeros((3, 3, 4), np.uint8)
  cmyk[1, 1, 3] = 255  # full black ink -> 0; no ink -> white
  cmyk_want = np.full((3, 3), 255, np.uint8)
  cmyk_want[1, 1] = 0
  i32 = np.arange(16, dtype=np.int32).reshape(4, 4) * 1000 - 5000
  f32 = np.linspace(-1.0, 3.0, 16, dtype=np.float32).reshape(4, 4)
  ramp = np.round(np.arange(16) * 255 / 15).astype(np.uint8).reshape(4, 4)
  wide = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (1, 20))[:, :1000]  # 1 x 1000
  portrait = np.zeros((8, 4), np.uint8)
  portrait[0, :] = 200
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
  return {
    'bilevel_1.png': (
      _encode(Image.fromarray(checker), 'PNG'),
      np.where(checker, 255, 0).astype(np.uint8),
    ),
    'grey_alpha_LA.png': (_encode(Image.fromarray(la, 'LA'), 'PNG'), la_want),
    'cmyk.tif': (_tiff(cmyk, 'CMYK'), cmyk_want),
    'int32_I.tif': (_tiff(i32), ramp),
    'float_F.tif': (_tiff(f32), ramp),
    'constant16.png': (
      helpers.png_bytes(np.full((5, 5), 1234, np.uint16)),
      np.zeros((5, 5), np.uint8),
    ),
    'one_pixel.png': (
      helpers.png_bytes(np.full((1, 1), 77, np.uint8)),
      np.full((1, 1), 77, np.uint8),
    ),
    'one_by_thousand.png': (helpers.png_bytes(wide), wide),
    'exif_rotated.png': (
      _encode(Image.fromarray(portrait), 'PNG', exif=exif),
      np.rot90(portrait, -1),
    ),
  }


@pytest.mark.parametrize('name', sorted(_odd_images()))
def test_odd_modes_and_sizes_decode_to_documented_grey(name, record):
  from jaxcxr.data import images  # pylint: disable=g-import-not-at-top

  data, want = _odd_images()[name]
  try:
    got = images.decode_grey(data, name=name)
  except Exception as e:  # an odd but valid file must decode; count a failure as unclear
    record(bad_input=f'odd image {name}', clear=False, problems=[repr(e)])
    raise
  record(bad_input=f'odd image {name}', clear=True, decoded=bool(np.array_equal(got, want)))
  assert got.dtype == np.uint8 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  square = images.resize_grey(got, 32)
  assert square.shape == (32, 32) and square.dtype == np.uint8
  if got.min() == got.max():
    assert np.all(square == got[0, 0])


# ----------------------------------------------------------------------------- CLI failures


def _can_mount() -> bool:
  return os.geteuid() == 0 and shutil.which('mount') is not None


def _train_args(work, *flags):
  return ['--config', str(th.REPO / 'configs' / 'tiny.py'), '--workdir', str(work), *flags]


def _copy_with_model(reference, dst, name):
  shutil.copytree(reference, dst)
  cfg = json.loads((dst / 'config.json').read_text())
  cfg['model']['name'] = name
  (dst / 'config.json').write_text(json.dumps(cfg, indent=2, sort_keys=True))
  return dst


@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory, data_dir, reference, chain_overrides, run_env):
  """Builds every bad input, runs every CLI case (4 at a time); name -> case dict."""
  root = tmp_path_factory.mktemp('bad_inputs')
  d = str(data_dir)
  cases = {}

  def case(name, module, args, rc, *needles, **extra):
    cases[name] = {
      'module': module,
      'args': [str(a) for a in args],
      'want_rc': rc,
      'needles': list(needles),
      **extra,
    }

  # Config flags and values.
  case(
    'mistyped_key',
    'launch.train',
    _train_args(root / 'w1', '--config.train.batch_sise=8'),
    1,
    '--config.train.batch_sise',
    "no key 'batch_sise'",
    'Did you mean "batch_size"',
  )
  case(
    'mistyped_section',
    'launch.train',
    _train_args(root / 'w2', '--config.trian.batch_size=8'),
    1,
    "no key 'trian'",
    'Did you mean "train"',
  )
  case(
    'bad_value_type',
    'launch.train',
    _train_args(root / 'w3', '--config.train.batch_size=8x'),
    1,
    'config.train.batch_size=8x',
  )

  # Data folders.
  bad = helpers.make_folder(root / 'bad_kaggle', THREE)
  for name, data in _bad_bytes().items():
    (bad / 'COVID' / 'images' / name).write_bytes(data)
  case(
    'bad_image_files',
    'launch.train',
    _train_args(
      root / 'w5',
      '--config.data.source=folder',
      f'--config.data.manual_dir={bad}',
      f'--config.data.data_dir={root / "tfds_bad"}',
    ),
    2,
    f'{len(BAD_FILES)} unusable image file(s)',
    "on_bad_image='skip'",
    *[f'{n}: ' for n in BAD_FILES],
    *BAD_FILES.values(),
  )
  missing = helpers.make_folder(root / 'two_classes', {'COVID': 3, 'Normal': 3})
  case(
    'missing_class_folder',
    'launch.train',
    _train_args(
      root / 'w6',
      '--config.data.source=folder',
      f'--config.data.manual_dir={missing}',
      f'--config.data.data_dir={root / "t6"}',
    ),
    2,
    "Class folder 'Viral Pneumonia/' is missing",
    "found folders: ['COVID', 'Normal']",
  )
  good = helpers.make_folder(root / 'kaggle', THREE)
  from jaxcxr import data as data_lib  # pylint: disable=g-import-not-at-top

  cfg, _ = th.tiny_config(
    root / 'tfds_good', **{'data.source': 'folder', 'data.manual_dir': str(good)}
  )
  data_lib.prepare(cfg.data, progress=False)
  case(
    'dataset_prepared_for_other_config',
    'launch.train',
    _train_args(
      root / 'w8',
      '--config.data.source=folder',
      f'--config.data.manual_dir={good}',
      f'--config.data.data_dir={root / "tfds_good"}',
      '--config.data.val_fraction=0.3',
    ),
    2,
    'was prepared with other settings',
    'settings.val_fraction: prepared 0.15, requested 0.3',
    'python -m launch.prepare_data',
  )

  # Converted weights of another architecture (cnn_small's, small to write, for a cnn_bn model;
  # a resnet18 directory for resnet34 takes the same path).
  import jax  # pylint: disable=g-import-not-at-top

  from jaxcxr import models  # pylint: disable=g-import-not-at-top
  from jaxcxr.models import weights  # pylint: disable=g-import-not-at-top

  small = models.build('cnn_small', 3).init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  converted = weights.save_converted(
    root / 'cnn_small_converted',
    'cnn_small',
    {k: small[k] for k in ('params', 'batch_stats') if k in small},
  )
  case(
    'weights_of_other_arch',
    'launch.train',
    _train_args(
      root / 'w9', f'--config.data.data_dir={d}', f'--config.model.pretrained={converted}'
    ),
    2,
    str(converted),
    'holds cnn_small weights',
    "config.model.name='cnn_bn'",
  )

  # Unwritable workdirs (root ignores permission bits: a path under a file, a read-only mount).
  blocker = root / 'a_file'
  blocker.write_text('x')
  case(
    'workdir_under_a_file',
    'launch.train',
    _train_args(blocker / 'run', f'--config.data.data_dir={d}'),
    2,
    str(blocker / 'run'),
    'writable',
    no_training=blocker / 'run',
  )
  ro = root / 'readonly_run'
  shutil.copytree(reference, ro)
  mounted = (
    _can_mount()
    and not subprocess.run(
      f'mount --bind {ro} {ro} && mount -o remount,ro,bind {ro}',
      shell=True,
      capture_output=True,
      check=False,
    ).returncode
  )
  if mounted:
    case(
      'workdir_read_only_resume',
      'launch.train',
      _train_args(ro, *th.config_flags(chain_overrides)),
      2,
      f"--workdir='{ro}' is not writable (Read-only file system)",
    )

  # Inference on bad files and odd files (odd ones must be predicted, bad ones listed).
  scans = root / 'scans'
  scans.mkdir()
  for name, data in _bad_bytes().items():
    (scans / name).write_bytes(data)
  for name, (data, _) in _odd_images().items():
    (scans / name).write_bytes(data)
  case(
    'predict_bad_and_odd_files',
    'launch.predict',
    ['--workdir', reference, '--images', scans, '--out', root / 'scans.csv'],
    1,
    f'{len(_odd_images())} predictions written',
    f'{len(BAD_FILES)} failed.',
    starts=('failed: ',),
  )  # partial success: one line per bad file, then the summary
  case(
    'predict_unwritable_out',
    'launch.predict',
    ['--workdir', reference, '--split', 'test', '--out', blocker / 'p.csv'],
    74,
    str(blocker / 'p.csv'),
  )
  other = _copy_with_model(reference, root / 'other_model', 'cnn_small')
  case(
    'predict_checkpoint_of_other_model',
    'launch.predict',
    ['--workdir', other, '--split', 'test', '--out', root / 'o.csv'],
    2,
    'does not fit model',
    "'cnn_small'",
  )
  corrupt = root / 'corrupt_latest'
  shutil.copytree(reference, corrupt)
  step, _ = harness.corrupt_latest(corrupt)
  case(
    'evaluate_truncated_checkpoint',
    'launch.evaluate',
    ['--workdir', corrupt, '--split', 'validation', '--which', 'latest'],
    2,
    f"The 'latest' checkpoint {corrupt / 'checkpoints' / str(step)} is unreadable",
    '--which best',
  )

  # A .pth that runs code when unpickled (launch.convert must refuse it, nothing executed).
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is not None:
    marker = root / 'pwned'
    evil = root / 'evil.pth'
    torch.save({'conv1.weight': torch.ones(1), 'payload': _Evil(marker)}, evil)
    case(
      'convert_pth_with_pickled_code',
      'launch.convert',
      ['--arch=resnet18', f'--source={evil}', f'--out={root / "converted"}'],
      2,
      'contains pickled objects other than tensors and was refused',
      marker=marker,
    )

  def run(item):
    name, c = item
    t0 = time.time()
    r = warm.run_module(c['module'], c['args'], env=run_env, cwd=th.REPO, timeout=600)
    return name, r, time.time() - t0

  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    for name, r, seconds in pool.map(run, cases.items()):
      cases[name].update(rc=r.returncode, stdout=r.stdout, stderr=r.stderr, seconds=seconds)
  cases['_mounted_read_only'] = mounted
  cases['_scans'] = scans
  yield cases
  if mounted:
    subprocess.run(['umount', '-l', str(ro)], check=False)


class _Evil:
  """Unpickling this runs `touch <marker>`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


# Each a distinct failure path; same-path variants are left to the library tests listed above
# (unknown model name, empty class folder, evaluate on another model's checkpoint, ...).
CLI_CASES = [
  'mistyped_key',
  'mistyped_section',
  'bad_value_type',
  'bad_image_files',
  'missing_class_folder',
  'dataset_prepared_for_other_config',
  'weights_of_other_arch',
  'workdir_under_a_file',
  'workdir_read_only_resume',
  'predict_bad_and_odd_files',
  'predict_unwritable_out',
  'predict_checkpoint_of_other_model',
  'evaluate_truncated_checkpoint',
  'convert_pth_with_pickled_code',
]


@pytest.mark.slow
@pytest.mark.parametrize('name', CLI_CASES)
def test_cli_failure_is_a_clear_message(cli_runs, name, record):
  if name not in cli_runs:
    pytest.skip(
      'needs a read-only bind mount (root + mount)'
      if 'read_only' in name
      else 'needs torch to write the .pth'
    )
  c = cli_runs[name]
  problems = harness.clear_failure(
    c['rc'],
    c['stderr'],
    c['want_rc'],
    *c['needles'],
    **({'starts': c['starts']} if 'starts' in c else {}),
  )
  record(
    bad_input=name,
    clear=not problems,
    exit_status=c['rc'],
    problems=problems,
    seconds=round(c['seconds'], 1),
  )
  assert not problems, '\n'.join(problems) + '\n--- stderr tail:\n' + c['stderr'][-3000:]
  if 'no_training' in c:
    assert not os.path.exists(c['no_training'])
  if 'marker' in c:
    assert not os.path.exists(c['marker']), 'the pickled payload was executed'


@pytest.mark.slow
def test_restore_for_inference_refuses_a_checkpoint_of_another_model(reference, tmp_path, record):
  """config.json says cnn_small, the checkpoint holds cnn_bn: a ValueError naming both, before
  any prediction (in-process twin of the launch.predict case)."""
  from jaxcxr.training import checkpoint  # pylint: disable=g-import-not-at-top

  work = _copy_with_model(reference, tmp_path / 'w', 'cnn_small')
  with pytest.raises(ValueError, match="does not fit model 'cnn_small'") as e:
    checkpoint.restore_for_inference(str(work))
  msg = str(e.value)
  record(bad_input='restore_for_inference with another model', clear='does not fit' in msg)
  assert msg.startswith(f"The checkpoint in {work / 'best'} does not fit model 'cnn_small'")
  assert 'mismatches' in msg and 'config.json edited' in msg


@pytest.mark.slow
def test_predict_lists_each_bad_file_and_predicts_every_odd_one(cli_runs):
  c = cli_runs['predict_bad_and_odd_files']
  scans = cli_runs['_scans']
  failed = {
    line.split(': ', 2)[1]: line for line in c['stderr'].splitlines() if line.startswith('failed: ')
  }
  assert sorted(failed) == sorted(str(scans / n) for n in BAD_FILES)
  for name, reason in BAD_FILES.items():
    assert reason in failed[str(scans / name)], failed[str(scans / name)]
  rows = c['args'][c['args'].index('--out') + 1]
  import csv  # pylint: disable=g-import-not-at-top

  with open(rows) as f:
    got = [r['file'] for r in csv.DictReader(f)]
  assert got == sorted(str(scans / n) for n in _odd_images())
