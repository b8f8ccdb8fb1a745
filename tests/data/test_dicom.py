"""Tests for jaxcxr.data.dicom: every encoding reads back as the PNG it was written from, the VOI
functions against pydicom's float64 reference, the header checks, the refusals, the real films.

Measured 2026-12-06 (pydicom 3.0.2, Pillow 13.0.0, pylibjpeg-openjpeg 2.6.0, python-gdcm 3.2.6,
pyjpegls 1.5.1) on cxr_dev films COVID-1021, Normal-*, Viral Pneumonia-* (224 px): every lossless
encoding of `tests/dicom_films.ENCODINGS` decodes to the PNG exactly (max abs difference 0);
JPEG 2000 10:1 max 10 / mean 0.9 grey levels, JPEG Baseline q95 max 6 / mean 0.6.
"""

import os

import jax
import numpy as np
import pydicom
import pydicom.pixels
import pydicom.uid
import pytest
from PIL import Image

from jaxcxr import models
from jaxcxr.data import dicom, folders, images, input_checks, phantom, preprocess
from tests import dicom_films as df
from tests.data import helpers

SIZE = 64  # model input side of the probability check


def _phantom_films() -> list[np.ndarray]:
  rng = np.random.default_rng(0)
  return [phantom.render(k, 3, image_size=96, rng=rng)['image'][0] for k in range(3)]


def _cxr_dev_films() -> list[np.ndarray]:
  if not helpers.CXR_DEV.is_dir():
    pytest.skip(f'real dev set not found at {helpers.CXR_DEV.resolve()} (../shared/data/cxr_dev)')
  paths = [sorted((helpers.CXR_DEV / c).glob('*.png'))[0] for c in ('COVID', 'Normal')]
  paths.append(sorted((helpers.CXR_DEV / 'Viral Pneumonia').glob('*.png'))[0])
  return [np.asarray(Image.open(p).convert('L')) for p in paths]


@pytest.fixture(scope='module')
def predict():
  """A small CNN (random weights, fixed seed): probabilities of uint8 (N, S, S, 1)."""
  module = models.build('cnn_small', 3)
  variables = module.init(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}

  @jax.jit
  def fn(x):
    logits = module.apply(variables, preprocess.to_model_input(x, np.float32), train=False)
    return jax.nn.softmax(logits.astype(np.float32), -1)

  return lambda greys: np.asarray(fn(np.stack([preprocess.prepare_grey(g, SIZE) for g in greys])))


@pytest.mark.parametrize(
  'source', ['phantom', pytest.param('cxr_dev', marks=pytest.mark.shared_data)]
)
@pytest.mark.parametrize('encoding', list(df.ENCODINGS))
def test_encoding_reads_back_as_the_png(tmp_path, encoding, source, predict):
  films = _phantom_films() if source == 'phantom' else _cxr_dev_films()
  _, _, tol, _ = df.ENCODINGS[encoding]
  decoded = []
  for i, png in enumerate(films):
    path = df.write_encoding(tmp_path / f'{i}.dcm', png, encoding)
    grey = images.load_grey(path)
    assert grey.shape == png.shape and grey.dtype == np.uint8
    diff = np.abs(grey.astype(int) - png)
    assert diff.max() <= tol, (encoding, i, diff.max())
    if tol > 1:  # lossy: close on average too (the phantoms' noise texture compresses worse)
      assert diff.mean() < (2.0 if source == 'cxr_dev' else 6.0), (encoding, i, diff.mean())
    decoded.append(grey)
  p_png, p_dcm = predict(films), predict(decoded)
  if tol <= 1:
    np.testing.assert_array_equal(p_dcm, p_png)  # the same pixels: the same probabilities
  else:
    np.testing.assert_allclose(p_dcm, p_png, atol=0.02)


def test_jpeg_baseline_is_pillows_decode_of_the_codestream(tmp_path):
  film = _phantom_films()[0]
  path = df.write_encoding(tmp_path / 'b.dcm', film, 'jpeg_baseline_8bit_q95')
  import io  # pylint: disable=g-import-not-at-top

  want = np.asarray(Image.open(io.BytesIO(df.jpeg_codestream(film))).convert('L'))
  np.testing.assert_array_equal(images.load_grey(path), want)


def _ds(bits: int = 12) -> pydicom.Dataset:
  ds = pydicom.Dataset()
  ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = bits, 16, 0
  ds.PhotometricInterpretation = 'MONOCHROME2'
  return ds


@pytest.mark.parametrize('function', ['LINEAR', 'LINEAR_EXACT', 'SIGMOID'])
@pytest.mark.parametrize(('center', 'width'), [(2048.0, 4096.0), (300.5, 101.0), (1000.0, 2.0)])
def test_window_matches_pydicoms_float64_reference(function, center, width):
  x = np.linspace(-100, 4200, 5001).astype(np.float32)
  ds = _ds(8)  # pydicom's output range is that of BitsStored: 8 bits -> 0..255 like ours
  ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
  want = pydicom.pixels.apply_voi_lut(x.astype(np.float64), ds)
  got = dicom.window(x, center, width, function)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-3)


def test_voi_lut_sequence_wins_and_matches_pydicom(tmp_path):
  film = _phantom_films()[1]
  path = df.write_encoding(tmp_path / 'v.dcm', film, 'j2k_lossless_15bit_mono1_voi_lut')
  ds = pydicom.dcmread(path)
  ref = pydicom.pixels.apply_voi_lut(ds.pixel_array, ds)  # the LUT (the window is ignored)
  assert ref.dtype == np.uint16  # 16-bit LUT entries, shown on 8 bits, MONOCHROME1 inverted
  np.testing.assert_array_equal(255 - ref.astype(int) // 257, images.load_grey(path))
  np.testing.assert_array_equal(images.load_grey(path), film)


def test_deep_data_without_voi_windows_on_its_own_percentiles_without_padding(tmp_path):
  rng = np.random.default_rng(0)
  inner = rng.integers(1000, 3000, (80, 60)).astype(np.uint16)
  inner[:10, :10] = 4095  # a PixelPaddingValue region inside the film
  framed = np.zeros((100, 80), np.uint16)  # a constant padding border of 0
  framed[10:90, 10:70] = inner
  plain = df.write(tmp_path / 'a.dcm', framed, bits_stored=12, attrs={'PixelPaddingValue': 4095})
  grey = images.load_grey(plain)
  values = inner[inner != 4095].astype(np.float32)
  lo, hi = np.percentile(values, dicom.AUTO_PERCENTILES)
  want = np.clip(np.rint((inner.astype(np.float32) - lo) * (255 / (hi - lo))), 0, 255)
  np.testing.assert_array_equal(grey[10:90, 10:70], want.astype(np.uint8))
  assert (grey[:10] == 0).all()  # the border is below the window
  assert dicom.border_box(framed.astype(np.float32)) == (10, 90, 10, 70)


def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
  path = df.write(tmp_path / 'big.dcm', np.zeros((400, 500), np.uint16), bits_stored=16)

  def no_decode(*a, **k):
    raise AssertionError('pixel data decoded')

  monkeypatch.setattr(pydicom.pixels, 'pixel_array', no_decode)
  with pytest.raises(images.ImageError, match=r'500x400 = 0\.2 megapixels, above') as e:
    images.load_grey(path, max_pixels=100_000)
  assert str(path) in str(e.value) and 'not decoded' in str(e.value)


def test_no_image_truncated_and_undecodable(tmp_path, monkeypatch):
  sr = pydicom.Dataset()
  sr.file_meta = pydicom.dataset.FileMetaDataset()
  sr.SOPClassUID = '1.2.840.10008.5.1.4.1.1.88.11'  # Basic Text SR
  sr.SOPInstanceUID = df.MARKER_UID
  sr.Modality = 'SR'
  sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  sr.save_as(tmp_path / 'report.dcm', enforce_file_format=True)
  with pytest.raises(images.ImageError, match=r"without an image \('Basic Text SR Storage'") as e:
    images.load_grey(tmp_path / 'report.dcm')
  assert 'report.dcm' in str(e.value) and df.MARKER_UID not in str(e.value)

  whole = df.write(tmp_path / 'whole.dcm', _phantom_films()[0], syntax=pydicom.uid.RLELossless)
  data = open(whole, 'rb').read()  # noqa: SIM115  a test's one-line read
  (tmp_path / 'cut.dcm').write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(images.ImageError, match='truncated or corrupt') as e:
    images.load_grey(tmp_path / 'cut.dcm')
  assert 'cut.dcm' in str(e.value) and '\n' not in str(e.value)

  lossless = df.write_encoding(tmp_path / 'l.dcm', _phantom_films()[0], 'jpeg_lossless_sv1_16bit')

  class Missing:
    is_available = False

  monkeypatch.setattr(pydicom.pixels, 'get_decoder', lambda uid: Missing())
  with pytest.raises(images.ImageError) as e:
    images.load_grey(lossless)
  assert "'JPEG Lossless, Non-Hierarchical, First-Order Prediction" in str(e.value)
  assert 'python-gdcm==3.2.6' in str(e.value) and 'l.dcm' in str(e.value)


def test_12bit_jpeg_extended_is_decoded(tmp_path):
  """Lossy 12-bit JPEG (process 4, by libjpeg-turbo): libjpeg-turbo through imagecodecs reads the
  stored samples back within the codec's loss, and the film reads as the same picture."""
  stored = _phantom_films()[0].astype(np.uint16) * 16  # 12-bit, 0..4080
  path = df.write(tmp_path / 'e.dcm', stored, bits_stored=12, syntax=pydicom.uid.JPEGExtended12Bit)
  with open(path, 'rb') as f:
    data = f.read()
  frame = dicom._decode_frame(data, pydicom.uid.JPEGExtended12Bit, 12)
  assert frame.shape == stored.shape
  diff = np.abs(frame.astype(np.int32) - stored)
  assert diff.max() <= 16 * 16 and diff.mean() < 16, (diff.max(), diff.mean())  # < 1 grey of 8 bits
  grey = images.load_grey(path)
  reference = images.load_grey(df.write(tmp_path / 'u.dcm', stored, bits_stored=12))
  assert np.abs(grey.astype(int) - reference).mean() < 1.0


def test_16bit_precision_jpeg_is_refused_naming_the_syntax(tmp_path):
  """GDCM writes a 16-bit-precision codestream for 12-bit samples under JPEG Extended: no
  standard decoder reads it; one line names the file, the syntax and how to convert it."""
  stored = _phantom_films()[0].astype(np.uint16) * 16
  ds = pydicom.dcmread(df.write(tmp_path / 'raw.dcm', stored, bits_stored=12))
  path = df._gdcm_encode(ds, str(tmp_path / 'g.dcm'), pydicom.uid.JPEGExtended12Bit)
  with pytest.raises(images.ImageError, match='cannot be decoded') as e:
    images.load_grey(path)
  assert 'JPEG Extended' in str(e.value) and 'gdcmconv --raw' in str(e.value)
  assert 'g.dcm' in str(e.value)


def test_private_transfer_syntax_is_named(tmp_path):
  path = df.write(tmp_path / 'p.dcm', _phantom_films()[0])
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = '1.2.3.4.5.6'
  ds.save_as(path, enforce_file_format=False)
  with pytest.raises(images.ImageError, match=r'1\.2\.3\.4\.5\.6 \(not a standard transfer'):
    images.load_grey(path)


def _inspect(path) -> input_checks.Inspection:
  return input_checks.inspect_file(path, image_size=SIZE)


@pytest.mark.parametrize(
  ('attrs', 'want'),
  [
    ({}, []),
    ({'Modality': 'DX', 'BodyPartExamined': 'TORAX', 'ViewPosition': 'AP'}, []),
    ({'BodyPartExamined': 'Tórax'}, []),
    ({'Modality': 'CT'}, ['header_modality']),
    ({'Modality': 'OT'}, ['header_modality']),
    ({'BodyPartExamined': 'SKULL'}, ['header_body_part']),
    ({'BodyPartExamined': None, 'Modality': None, 'ViewPosition': None}, []),
    ({'ViewPosition': 'LL'}, ['header_view']),
    ({'PresentationIntentType': 'FOR PROCESSING'}, ['header_for_processing']),
    ({'ImageType': ['ORIGINAL', 'PRIMARY', '', 'FOR PROCESSING']}, ['header_for_processing']),
    (
      {'Modality': 'MR', 'BodyPartExamined': 'KNEE', 'ViewPosition': 'RL'},
      ['header_modality', 'header_body_part', 'header_view'],
    ),
  ],
)
def test_header_reasons(tmp_path, attrs, want):
  path = df.write(tmp_path / 'h', _phantom_films()[0], attrs=attrs)
  ins = _inspect(path)
  assert ins.reasons == want
  assert set(ins.header) == set(dicom.HEADER_KEYS)


def test_multi_frame_is_frame_zero_flagged(tmp_path):
  films = np.stack(_phantom_films())
  path = df.write(tmp_path / 'mf.dcm', films)
  ins = _inspect(path)
  np.testing.assert_array_equal(ins.grey, films[0])
  assert ins.reasons == ['header_frames'] and ins.header['frames'] == 3


def test_colour_dicom_is_pillows_luma_and_flagged(tmp_path):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  path = df.write(tmp_path / 'c.dcm', rgb, photometric='RGB')
  ins = _inspect(path)
  np.testing.assert_array_equal(ins.grey, np.asarray(Image.fromarray(rgb).convert('L')))
  assert ins.reasons == ['colour', 'header_colour'] and ins.measures['colour'] > 50


def test_preamble_less_is_read_and_random_binary_is_not(tmp_path):
  film = _phantom_films()[2]
  bare = df.write_encoding(tmp_path / 'bare', film, 'no_preamble_8bit')
  assert not dicom.has_preamble(open(bare, 'rb').read())  # noqa: SIM115  a test's one-line read
  np.testing.assert_array_equal(images.load_grey(bare), film)
  (tmp_path / 'noise').write_bytes(np.random.default_rng(0).bytes(5000))
  with pytest.raises(images.ImageError, match='not an image Pillow can identify'):
    images.load_grey(tmp_path / 'noise')


def test_list_films_by_extension_or_preamble(tmp_path):
  film = _phantom_films()[0]
  study = tmp_path / 'export' / '1.2.3' / '1.2.3.4'
  a = df.write(study / '1.2.3.4.5', film)  # named by UID, no extension
  b = df.write(study / '1.2.3.4.6.DCM', film)
  c = helpers.save_png(tmp_path / 'export' / 'x.png', film)
  (tmp_path / 'export' / 'metadata.xlsx').write_bytes(b'PK\x03\x04' + bytes(300))
  (tmp_path / 'export' / 'notes.txt').write_text('not a film\n' * 30)
  df.write(tmp_path / 'export' / '.hidden.dcm', film)
  df.write(tmp_path / 'export' / 'DICOMDIR', film)  # a CD's index (a real one holds no image)
  want = sorted([a, b, str(c)])
  assert folders.list_films(str(tmp_path / 'export')) == want
  assert folders.list_films(str(tmp_path / 'export' / '*')) == want  # a glob recurses into folders
  assert folders.list_films(str(tmp_path / 'export' / 'notes.txt')) == [
    str(tmp_path / 'export' / 'notes.txt')  # a file named on its own is the user's choice
  ]


def test_labels_csv(tmp_path):
  film = _phantom_films()[0]
  df.write(tmp_path / 'set' / 'a.dcm', film)
  df.write(tmp_path / 'set' / 'study9' / 's1' / 'i1', film)
  df.write(tmp_path / 'set' / 'study9' / 's1' / 'i2', film)
  names = ('COVID', 'Normal', 'Viral Pneumonia')
  csv_path = tmp_path / 'set' / 'labels.csv'
  csv_path.write_text('Image,Label\na.dcm,covid-19\nstudy9,NORMAL\n')
  files, labels, shown = folders.read_labels_csv(csv_path, names)
  assert labels == [0, 1, 1]
  assert shown == ['a.dcm', os.path.join('study9', 's1', 'i1'), os.path.join('study9', 's1', 'i2')]
  assert files[0] == tmp_path / 'set' / 'a.dcm'
  csv_path.write_text('file,class\na.dcm,COVID\nb.dcm,Normal\n')
  with pytest.raises(FileNotFoundError, match=r'labels\.csv row 3: b\.dcm does not exist'):
    folders.read_labels_csv(csv_path, names)
  csv_path.write_text('file,class\na.dcm,Pneumothorax\n')
  with pytest.raises(ValueError, match=r"row 2 \(a\.dcm\): unknown class 'Pneumothorax'"):
    folders.read_labels_csv(csv_path, names)
  csv_path.write_text('name,finding\na.dcm,COVID\n')
  with pytest.raises(ValueError, match='needs a file column'):
    folders.read_labels_csv(csv_path, names)


# The real films (../shared/data/dicom, SOURCES.md): polarity by a simple statistic: in a frontal
# chest film the lungs (left and right thirds, middle rows) are darker than the mediastinum and
# spine (middle column strip).
def _lungs_minus_mediastinum(grey: np.ndarray) -> float:
  h, w = grey.shape
  rows = slice(h * 3 // 10, h * 6 // 10)
  lungs = np.concatenate([grey[rows, w // 6 : w // 3], grey[rows, 2 * w // 3 : 5 * w // 6]], 1)
  middle = grey[rows, w * 9 // 20 : w * 11 // 20]
  return float(lungs.mean() - middle.mean())


@pytest.fixture
def real():
  if not df.REAL.is_dir():
    pytest.skip(df.NO_REAL)
  return {p.stem: p for p in df.REAL.glob('*.dcm')}


@pytest.mark.shared_data
def test_real_films_read_right_side_up(real):
  siim = _inspect(real['siim_cr_jpeg_baseline_monochrome2'])
  tagged = _inspect(real['siim_same_pixels_tagged_monochrome1'])
  cr = _inspect(real['cr_chest_monochrome1_10bit_window'])
  for ins in (siim, cr):
    assert ins.reasons == [] and ins.header['modality'] == 'CR'
    assert _lungs_minus_mediastinum(ins.grey) < -20  # lungs dark: right side up
  # The same stored pixels tagged MONOCHROME1: the exact negative, lungs bright.
  np.testing.assert_array_equal(tagged.grey, 255 - siim.grey)
  assert _lungs_minus_mediastinum(tagged.grey) > 20
  assert cr.header['bits_stored'] == 10 and cr.header['photometric'] == 'MONOCHROME1'
  assert siim.grey.shape == (1024, 1024) and cr.grey.shape == (440, 440)


def test_prepare_a_kaggle_folder_of_dicom_and_png_films(tmp_path):
  """The dataset builder reads DICOM (any name) beside PNGs: the stored records are the films."""
  import jaxcxr.data as data_lib  # pylint: disable=g-import-not-at-top  (heavy: this test only)

  rng = np.random.default_rng(3)
  films = {}
  for label, name in enumerate(('COVID', 'Normal', 'Viral Pneumonia')):
    greys = phantom.render(label, 6, image_size=32, rng=rng)['image']
    for i, grey in enumerate(greys):
      rel = f'{name}/f{i}' + ('.png' if i % 3 == 0 else '.dcm' if i % 3 == 1 else '')
      if i % 3 == 0:
        helpers.save_png(tmp_path / 'kaggle' / rel, grey)
      else:
        encoding = 'explicit_12bit_window' if i % 2 else 'rle_16bit_rescale_linear_exact'
        df.write_encoding(tmp_path / 'kaggle' / rel, grey, encoding)
      films[rel] = grey
  cfg = helpers.data_config(
    tmp_path / 'tfds',
    source='folder',
    manual_dir=str(tmp_path / 'kaggle'),
    stored_size=32,
    lookalike_threshold=-1,
  )
  handle = data_lib.prepare(cfg, progress=False)
  seen = 0
  for split in ('train', 'validation', 'test'):
    if not handle.num_examples[split]:
      continue
    source = handle.source(split)
    for i, name in enumerate(handle.filenames(split)):
      stored = np.asarray(source[i]['image'])
      np.testing.assert_array_equal(stored.reshape(films[name].shape), films[name])
      seen += 1
  assert seen == len(films) == 18
