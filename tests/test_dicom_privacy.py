"""No patient data in any output: DICOM films carrying a marker in every PS3.15 Annex E Basic
Profile attribute we can set (`tests/dicom_films.IDENTIFYING`: names, IDs, dates, times,
accession and study numbers, study / series / SOP instance / frame-of-reference UIDs as valid UID
digits, institution, station, device serial, physicians, operators, descriptions, comments, a
private block, and one invalid value pydicom would warn about) go through every command that takes
films: launch.train (prepare + train + report), launch.predict (a Kaggle folder and a nested
study / series / instance export named by UID), launch.evaluate --eval_dir (class folders, and a
labels CSV), launch.gradcam, launch.fit_ood --in_dir and launch.explore. Every file they write
(CSV, JSON, Markdown, PNG, TFDS metadata and records, TensorBoard events, checkpoints) and their
captured stdout / stderr are searched, as bytes, for the markers.

One subprocess per command (the logs are the real ones); ~2-3 minutes on the 2-core box.
"""

import concurrent.futures
import subprocess
from pathlib import Path

import numpy as np
import pydicom.uid
import pytest

from jaxcxr.data import phantom
from tests import dicom_films as df
from tests import train_helpers as th

CLASSES = ('COVID', 'Normal', 'Viral Pneumonia')
PER_CLASS = 8
# Encodings cycled through the films (different readers, different code paths).
SYNTAXES = (
  pydicom.uid.ExplicitVRLittleEndian,
  pydicom.uid.ImplicitVRLittleEndian,
  pydicom.uid.RLELossless,
  pydicom.uid.JPEG2000Lossless,
  pydicom.uid.JPEGBaseline8Bit,
)


def _write_film(path: Path, grey: np.ndarray, k: int) -> str:
  attrs = df.identifying_attrs()
  attrs['StudyInstanceUID'] = f'{df.MARKER_UID}.1.{k}'
  attrs['SeriesInstanceUID'] = f'{df.MARKER_UID}.2.{k}'
  attrs['SOPInstanceUID'] = f'{df.MARKER_UID}.3.{k}'
  if k % 4 == 0:
    attrs['PatientSex'] = df.MARKER.lower()  # an invalid CS: pydicom would warn quoting it
  if k % 3 == 1:  # 12 bits, MONOCHROME1, a window: the VOI path
    stored = (255 - grey).astype(np.uint16) * 16
    out = df.write(
      path,
      stored,
      syntax=SYNTAXES[k % len(SYNTAXES)] if k % 5 != 4 else pydicom.uid.ExplicitVRLittleEndian,
      photometric='MONOCHROME1',
      bits_stored=12,
      attrs={**attrs, 'WindowCenter': 2040.5, 'WindowWidth': 4081},
    )
  else:
    out = df.write(path, grey, syntax=SYNTAXES[k % len(SYNTAXES)], attrs=attrs)
  df.add_private(out)
  return out


@pytest.fixture(scope='module')
def films(tmp_path_factory):
  """A Kaggle-layout DICOM folder, a nested UID-named export and a labels CSV."""
  root = tmp_path_factory.mktemp('dicom_privacy')
  rng = np.random.default_rng(0)
  kaggle, export = root / 'kaggle', root / 'export'
  rows = ['file,label']
  k = 0
  for label, name in enumerate(CLASSES):
    greys = phantom.render(label, PER_CLASS, image_size=64, rng=rng)['image']
    for i, grey in enumerate(greys):
      suffix = '.dcm' if i % 2 else ''  # hospital exports: named by UID, no extension
      _write_film(kaggle / name / f'film{i}{suffix}', grey, k)
      rel = f'study{label}/series1/1.2.3.{i}'
      _write_film(export / rel, grey, k + 1000)
      rows.append(f'{rel},{name}')
      k += 1
  (export / 'labels.csv').write_text('\n'.join(rows) + '\n')
  # Bad films carrying the markers too: their one-line errors must not quote the header.
  bad = root / 'bad'
  whole = Path(_write_film(bad / 'truncated.dcm', greys[0], 2000)).read_bytes()
  (bad / 'truncated.dcm').write_bytes(whole[: len(whole) * 3 // 4])
  cut = Path(_write_film(bad / 'cut_header', greys[0], 2001)).read_bytes()
  (bad / 'cut_header').write_bytes(cut[:700])  # inside the identifying attributes
  private = _write_film(bad / 'private_syntax.dcm', greys[1], 2002)
  ds = pydicom.dcmread(private)
  ds.file_meta.TransferSyntaxUID = '1.2.3.4.5.6'  # a codec's UID, named in the error
  ds.save_as(private, enforce_file_format=False)
  report = pydicom.dcmread(_write_film(bad / 'report.dcm', greys[2], 2003))
  del report.PixelData
  report.SOPClassUID = df.MARKER_UID + '.8'  # a private SOP class
  report.save_as(bad / 'report.dcm', enforce_file_format=True)
  return root


def _cmd(module: str, *args) -> list:
  """[module, *args]: a command for `_run`."""
  return [module, *args]


def _run(cmd: list) -> subprocess.CompletedProcess:
  """`python -m <cmd>`, started warm (tests/warm.py)."""
  return th.run_cli(*cmd, timeout=900)


def _leaks(folder: Path) -> dict[str, list[str]]:
  """file -> markers found in it (as bytes: binary files included)."""
  needles = [m.encode() for m in df.markers()]
  found = {}
  for path in sorted(p for p in folder.rglob('*') if p.is_file()):
    data = path.read_bytes()
    hits = [n.decode() for n in needles if n in data]
    if hits:
      found[str(path)] = hits
  return found


@pytest.mark.slow
def test_no_header_value_reaches_any_output(films, tmp_path):
  kaggle, export = films / 'kaggle', films / 'export'
  work, tfds, out = tmp_path / 'work', tmp_path / 'tfds', tmp_path / 'out'
  config = th.REPO / 'configs' / 'tiny.py'
  data_flags = [
    '--config.data.source=folder',
    f'--config.data.manual_dir={kaggle}',
    f'--config.data.data_dir={tfds}',
  ]
  train = _run(_cmd('launch.train', '--config', config, '--workdir', work, *data_flags))
  logs = {'train': train}
  assert train.returncode == 0, train.stderr[-3000:]
  runs = {
    'predict_kaggle': _cmd(
      'launch.predict', '--workdir', work, '--images', kaggle, '--out', out / 'p_kaggle.csv'
    ),
    'predict_export': _cmd(
      'launch.predict', '--workdir', work, '--images', f'{export}/*', '--out', out / 'p_exp.csv'
    ),
    'evaluate_folders': _cmd(
      'launch.evaluate', '--workdir', work, '--eval_dir', kaggle, '--out', out / 'eval_kaggle'
    ),
    'evaluate_csv': _cmd(
      'launch.evaluate',
      '--workdir',
      work,
      '--labels_csv',
      export / 'labels.csv',
      '--out',
      out / 'eval_csv',
    ),
    'gradcam': _cmd(
      'launch.gradcam', '--workdir', work, '--images', export, '--out', out / 'gradcam'
    ),
    # --per_set: each transformed set still takes every film of the export (24); the generated
    # sets (no DICOM in them) get as many pictures, not the default 200 (11 s of CPU -> 3).
    'fit_ood': _cmd(
      'launch.fit_ood',
      '--workdir',
      work,
      '--in_dir',
      export,
      '--out',
      out / 'ood',
      '--refit',
      f'--per_set={PER_CLASS * len(CLASSES)}',
    ),
    'explore': _cmd('launch.explore', '--config', config, *data_flags, '--out', out / 'explore'),
    'predict_bad': _cmd(
      'launch.predict', '--workdir', work, '--images', films / 'bad', '--out', out / 'p_bad.csv'
    ),
  }
  out.mkdir()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for name, result in zip(runs, pool.map(_run, runs.values()), strict=True):
      logs[name] = result
  for name, result in logs.items():
    want = 1 if name == 'predict_bad' else 0  # 1: some file failed
    assert result.returncode == want, f'{name}: rc {result.returncode}\n{result.stderr[-3000:]}'
  failed = [line for line in logs['predict_bad'].stderr.splitlines() if line.startswith('failed:')]
  assert len(failed) == 4, logs['predict_bad'].stderr[-3000:]
  # Every film was read (none failed) and scored.
  for csv_name in ('p_kaggle.csv', 'p_exp.csv'):
    rows = (out / csv_name).read_text().splitlines()
    assert len(rows) == 1 + PER_CLASS * len(CLASSES), (csv_name, rows[:3])
  assert (out / 'eval_csv' / 'predictions.csv').read_text().count('\n') == 1 + 24
  # No marker anywhere: outputs, workdir, prepared data, logs.
  leaks = {}
  for folder in (out, work, tfds):
    leaks.update(_leaks(folder))
  for name, result in logs.items():
    for stream in ('stdout', 'stderr'):
      text = getattr(result, stream)
      hits = [m for m in df.markers() if m in text]
      if hits:
        leaks[f'{name} {stream}'] = hits
  assert not leaks, leaks
  # The test can fail: the films themselves carry every marker.
  film = next(kaggle.rglob('film1.dcm')).read_bytes()
  assert all(m.encode() in film for m in (df.MARKER, df.MARKER_UID, *df.DATE_MARKERS))
