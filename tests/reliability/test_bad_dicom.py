"""Bad DICOM through launch.predict: each bad file is one line naming the file and what to do, each
odd one a flagged row, nothing else lost (the good films are all predicted, the exit status says a
file failed). The library-level refusals (pixel limit before decoding, a decoder package missing)
are in tests/data/test_dicom.py; the memory of the largest film is a benchmark figure
(launch.benchmark_dicom), not a timed test.
"""

import csv

import numpy as np
import pydicom
import pydicom.uid
import pytest
from pydicom.dataset import FileMetaDataset

from jaxcxr.data import phantom
from tests import dicom_films as df
from tests import train_helpers as th
from tests import warm

# file -> what its one failure line must say.
BAD = {
  'truncated.dcm': ('truncated or corrupt', 'export it again'),
  'report.dcm': ("without an image ('Basic Text SR Storage'", 'give the image files'),
  'private_syntax.dcm': ('not a standard transfer syntax', 'gdcmconv --raw'),
}
# file -> its ood_reason (a row is written, flagged).
FLAGGED = {
  'multiframe.dcm': 'header_frames',
  'ct.dcm': 'header_modality',
  'lateral': 'header_view',  # no extension: found by its preamble
}
GOOD = ('good.dcm', '1.2.840.99.1', 'big_16bit_4000.dcm')


def _bare(path, sop_class: str) -> None:
  """A DICOM object without an image (no Rows / Columns / Pixel Data)."""
  ds = pydicom.Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  ds.SOPClassUID, ds.SOPInstanceUID = sop_class, pydicom.uid.generate_uid()
  ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope='module')
def scans(tmp_path_factory):
  root = tmp_path_factory.mktemp('bad_dicom') / 'scans'
  films = phantom.render(0, 3, image_size=64, rng=np.random.default_rng(0))['image']
  df.write(root / 'good.dcm', films[0])
  df.write(root / '1.2.840.99.1', films[1], syntax=pydicom.uid.RLELossless)
  big = np.tile(films[2].astype(np.uint16) * 257, (63, 63))[:4000, :4000]
  df.write(root / 'big_16bit_4000.dcm', big, bits_stored=16)
  whole = open(df.write(root / 'whole.dcm', films[0]), 'rb').read()  # noqa: SIM115  one-line read
  (root / 'whole.dcm').unlink()
  (root / 'truncated.dcm').write_bytes(whole[: len(whole) // 2])
  _bare(root / 'report.dcm', '1.2.840.10008.5.1.4.1.1.88.11')
  _bare(root / 'DICOMDIR', '1.2.840.10008.1.3.10')  # a CD's index: skipped in a folder
  private = df.write(root / 'private_syntax.dcm', films[0])
  ds = pydicom.dcmread(private)
  ds.file_meta.TransferSyntaxUID = '1.2.3.4.5.6'
  ds.save_as(private, enforce_file_format=False)
  df.write(root / 'multiframe.dcm', films)
  df.write(root / 'ct.dcm', films[0], attrs={'Modality': 'CT'})
  df.write(root / 'lateral', films[1], attrs={'ViewPosition': 'LL'})
  (root / 'notes.txt').write_text('not a film\n')
  return root


@pytest.mark.slow
def test_predict_on_bad_dicom(scans, reference, run_env, tmp_path, record):
  out = tmp_path / 'p.csv'
  r = warm.run_module(
    'launch.predict',
    [
      '--workdir',
      str(reference),
      '--images',
      str(scans),
      '--images',
      str(scans / 'DICOMDIR'),  # named on its own: reported, not skipped
      '--out',
      str(out),
      '--reject_ood',
    ],
    cwd=th.REPO,
    env=run_env,
    timeout=600,
  )
  failed = {
    line.split(': ', 2)[1]: line for line in r.stderr.splitlines() if line.startswith('failed: ')
  }
  want_failed = sorted([str(scans / n) for n in BAD] + [str(scans / 'DICOMDIR')])
  record(
    bad_input='DICOM: truncated, SR, DICOMDIR, private syntax; multi-frame, CT, lateral, 4000 px',
    clear=sorted(failed) == want_failed,
    exit_status=r.returncode,
  )
  assert r.returncode == 1, r.stderr[-3000:]
  assert 'Traceback' not in r.stderr
  assert sorted(failed) == want_failed, r.stderr[-3000:]
  for name, needles in BAD.items():
    for needle in needles:
      assert needle in failed[str(scans / name)], failed[str(scans / name)]
  assert "'Media Storage Directory Storage'" in failed[str(scans / 'DICOMDIR')]
  with open(out) as f:
    rows = {row['file']: row for row in csv.DictReader(f)}
  assert sorted(rows) == sorted(str(scans / n) for n in (*GOOD, *FLAGGED))
  for name, reason in FLAGGED.items():
    row = rows[str(scans / name)]
    assert reason in row['ood_reason'].split(';'), row
    assert row['in_distribution'] == 'false' and row['predicted_label'] == 'OUT_OF_DISTRIBUTION'
  for name in GOOD:
    assert not {'header_frames', 'header_modality', 'header_view'} & set(
      rows[str(scans / name)]['ood_reason'].split(';')
    )
  assert f'{len(rows)} predictions written to {out}; {len(want_failed)} failed.' in r.stderr
