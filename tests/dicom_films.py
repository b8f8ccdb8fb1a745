"""DICOM files for the tests, written on the spot with pydicom (no download).

`write(path, stored, ...)` writes a chest-film DICOM of given stored values in any transfer syntax
the project decodes: uncompressed implicit / explicit VR, RLE, JPEG 2000 (lossless and lossy) and
JPEG-LS with pydicom's encoders, JPEG Baseline as Pillow's codestream encapsulated, JPEG Lossless
(process 14 SV1) with GDCM. `ENCODINGS` turns an 8-bit PNG film into stored values and the
attributes that make a viewer show the PNG again (monochrome 1 / 2, 8 / 12 / 15 / 16 bits,
signed, rescale, window, VOI and modality LUT sequences, Presentation LUT Shape).
`IDENTIFYING` puts a marker in every PS3.15 Annex E Basic Profile attribute we can set.
"""

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.uid
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

REAL = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'dicom'
NO_REAL = f'real DICOM films not found: {REAL} (the shared data folder next to the checkout)'

CR_IMAGE = '1.2.840.10008.5.1.4.1.1.1'  # Computed Radiography Image Storage
DX_IMAGE = '1.2.840.10008.5.1.4.1.1.1.1'  # Digital X-Ray Image Storage - For Presentation

# A string that must never reach an output, and its UID form (digits only).
MARKER = 'ZQXMARKER'
MARKER_UID = '1.2.826.0.1.3680043.2.1125.987654321'


def _lut_item(first: int, bits: int, table: np.ndarray, ow: bool = False) -> Dataset:
  """A Modality / VOI LUT item; LUTData as US values, or OW bytes (no 64 kB limit)."""
  item = Dataset()
  item.add_new('LUTDescriptor', 'US', [len(table) % 65536, first, bits])
  if ow:
    item.add_new('LUTData', 'OW', np.asarray(table, '<u2').tobytes())
  else:
    item.add_new('LUTData', 'US', [int(v) for v in table])
  return item


def jpeg_codestream(pixels: np.ndarray, quality: int = 95) -> bytes:
  """Pillow's baseline JPEG of uint8 (H, W) grey (pydicom has no JPEG Baseline encoder)."""
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=quality, subsampling=0)
  return buf.getvalue()


def write(
  path,
  stored: np.ndarray,
  *,
  syntax: str = pydicom.uid.ExplicitVRLittleEndian,
  photometric: str = 'MONOCHROME2',
  bits_stored: int = 8,
  signed: bool = False,
  attrs: dict | None = None,
  lossy_ratio: float = 0.0,
  preamble: bool = True,
) -> str:
  """Writes stored values (uint8/uint16/int16 (H, W), (F, H, W) or (H, W, 3)) as a DICOM file.

  Args:
    path: the file to write (folders made).
    stored: the stored pixel values.
    syntax: the transfer syntax UID (compressed with the project's pinned encoders).
    photometric: PhotometricInterpretation.
    bits_stored: BitsStored (BitsAllocated is 8 or 16 from it).
    signed: PixelRepresentation 1.
    attrs: further attributes by keyword (window, LUT sequences, header facts, identifiers).
    lossy_ratio: JPEG 2000 (lossy) compression ratio.
    preamble: False writes the bare data set (no 128-byte preamble, no file meta).

  Returns:
    str(path).
  """
  stored = np.ascontiguousarray(stored)
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.SOPClassUID = CR_IMAGE
  ds.SOPInstanceUID = pydicom.uid.generate_uid()
  ds.Modality = 'CR'
  ds.BodyPartExamined = 'CHEST'
  ds.ViewPosition = 'PA'
  ds.set_pixel_data(stored, photometric, bits_stored)
  if signed:
    ds.PixelRepresentation = 1
  for key, value in (attrs or {}).items():
    if value is None:
      if key in ds:
        delattr(ds, key)
    else:
      setattr(ds, key, value)
  if syntax == pydicom.uid.JPEGExtended12Bit and bits_stored > 8:
    # A 12-bit process 4 codestream by libjpeg-turbo 3 (GDCM writes a 16-bit-precision JPEG here,
    # which is no standard JPEG Extended stream).
    import imagecodecs  # pylint: disable=g-import-not-at-top  (only this encoding needs it)

    codestream = imagecodecs.jpeg8_encode(stored, level=95, bitspersample=12)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(codestream)])
    ds['PixelData'].VR = 'OB'
    ds.file_meta.TransferSyntaxUID = syntax
    ds.LossyImageCompression = '01'
  elif syntax == pydicom.uid.JPEGBaseline8Bit:
    ds.PixelData = pydicom.encaps.encapsulate([jpeg_codestream(stored)])
    ds['PixelData'].VR = 'OB'
    ds.file_meta.TransferSyntaxUID = syntax
    ds.LossyImageCompression = '01'
  elif syntax in _GDCM_SYNTAXES:
    return _gdcm_encode(ds, str(path), syntax)
  elif syntax == pydicom.uid.JPEGLSNearLossless:
    ds.compress(syntax, jls_error=2)
  elif syntax == pydicom.uid.JPEG2000 and lossy_ratio:
    ds.compress(syntax, j2k_cr=[lossy_ratio], use_mct=False)
  elif pydicom.uid.UID(syntax).is_compressed:
    ds.compress(syntax)
  elif syntax != ds.file_meta.TransferSyntaxUID:
    ds.file_meta.TransferSyntaxUID = syntax
  os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
  if preamble:
    ds.save_as(str(path), enforce_file_format=True)
  else:
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    del ds.file_meta
    pydicom.dcmwrite(str(path), ds, implicit_vr=implicit, little_endian=True)
  return str(path)


# Syntaxes GDCM encodes for the tests (pydicom has no encoder for them).
_GDCM_SYNTAXES = (
  pydicom.uid.JPEGLosslessSV1,
  pydicom.uid.JPEGExtended12Bit,
)


def _gdcm_encode(ds: Dataset, path: str, syntax: str) -> str:
  """JPEG Lossless process 14 SV1 or JPEG Extended by GDCM."""
  import gdcm  # pylint: disable=g-import-not-at-top  (only these encodings need it)

  kind = {
    pydicom.uid.JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    pydicom.uid.JPEGExtended12Bit: gdcm.TransferSyntax.JPEGExtendedProcess2_4,
  }[syntax]

  raw = path + '.raw.dcm'
  ds.save_as(raw, enforce_file_format=True)
  reader = gdcm.ImageReader()
  reader.SetFileName(raw)
  assert reader.Read(), raw
  change = gdcm.ImageChangeTransferSyntax()
  change.SetTransferSyntax(gdcm.TransferSyntax(kind))
  change.SetInput(reader.GetImage())
  assert change.Change()
  writer = gdcm.ImageWriter()
  writer.SetFileName(path)
  writer.SetFile(reader.GetFile())
  writer.SetImage(change.GetOutput())
  assert writer.Write()
  os.remove(raw)
  return path


def _ramp_lut(n: int, step: int, bits: int, scale: int = 1) -> np.ndarray:
  return (np.arange(n) // step * scale).astype(np.int64).clip(0, (1 << bits) - 1)


# name -> (transfer syntax, fn(png uint8 (H, W)) -> (stored, write() keyword args), max abs grey
# difference to the PNG allowed). Lossless encodings are within one grey level (float32 rounding);
# the lossy ones say their tolerance.
def _enc(syntax, fn, tol=1, **kw):
  return syntax, fn, tol, kw


ENCODINGS = {
  # 8 bits as stored: the PNG datasets' own conversion.
  'implicit_8bit_mono2': _enc(pydicom.uid.ImplicitVRLittleEndian, lambda p: (p, {})),
  'explicit_8bit_mono1': _enc(
    pydicom.uid.ExplicitVRLittleEndian, lambda p: (255 - p, {'photometric': 'MONOCHROME1'})
  ),
  # 12 bits, LINEAR window [0, 4080] -> [0, 255] (PS3.3 C.11.2.1.2: c - 0.5 = 2040, w - 1 = 4080).
  'explicit_12bit_window': _enc(
    pydicom.uid.ExplicitVRLittleEndian,
    lambda p: (
      p.astype(np.uint16) * 16,
      {'bits_stored': 12, 'attrs': {'WindowCenter': 2040.5, 'WindowWidth': 4081}},
    ),
  ),
  # 16 bits, rescale slope / intercept, LINEAR_EXACT window over the rescaled range.
  'rle_16bit_rescale_linear_exact': _enc(
    pydicom.uid.RLELossless,
    lambda p: (
      p.astype(np.uint16) * 257,
      {
        'bits_stored': 16,
        'attrs': {
          'RescaleSlope': 0.25,
          'RescaleIntercept': -100,
          'WindowCenter': -100 + 255 * 257 * 0.25 / 2,
          'WindowWidth': 255 * 257 * 0.25,
          'VOILUTFunction': 'LINEAR_EXACT',
        },
      },
    ),
  ),
  # 15 bits, MONOCHROME1, VOI LUT Sequence (16-bit output as OW, 128 stored values per grey level)
  # that wins over a wrong window also present.
  'j2k_lossless_15bit_mono1_voi_lut': _enc(
    pydicom.uid.JPEG2000Lossless,
    lambda p: (
      (255 - p).astype(np.uint16) * 128 + 64,
      {
        'bits_stored': 15,
        'photometric': 'MONOCHROME1',
        'attrs': {
          'VOILUTSequence': Sequence([_lut_item(0, 16, _ramp_lut(32768, 128, 16, 257), ow=True)]),
          'WindowCenter': 100,
          'WindowWidth': 50,
        },
      },
    ),
  ),
  # 12 bits signed (two's complement), window on the signed values, JPEG-LS lossless.
  'jpegls_12bit_signed_window': _enc(
    pydicom.uid.JPEGLSLossless,
    lambda p: (
      (p.astype(np.int16) * 16 - 2048),
      {
        'bits_stored': 12,
        'signed': True,
        'attrs': {'WindowCenter': -2048 + 2040.5, 'WindowWidth': 4081},
      },
    ),
  ),
  # 16 bits, JPEG Lossless process 14 SV1 (GDCM), LINEAR window [0, 65535] -> [0, 255].
  'jpeg_lossless_sv1_16bit': _enc(
    pydicom.uid.JPEGLosslessSV1,
    lambda p: (
      p.astype(np.uint16) * 257,
      {'bits_stored': 16, 'attrs': {'WindowCenter': 32768, 'WindowWidth': 65536}},
    ),
  ),
  # 12 bits, Modality LUT Sequence (stored // 16 -> 0..255), then a window on its output.
  'explicit_12bit_modality_lut': _enc(
    pydicom.uid.ExplicitVRLittleEndian,
    lambda p: (
      p.astype(np.uint16) * 16 + 5,
      {
        'bits_stored': 12,
        'attrs': {
          'ModalityLUTSequence': Sequence([_lut_item(0, 16, _ramp_lut(4096, 16, 16))]),
          'WindowCenter': 128,
          'WindowWidth': 256,
        },
      },
    ),
  ),
  # MONOCHROME2 stored inverted with Presentation LUT Shape INVERSE: shown as the PNG.
  'explicit_8bit_mono2_inverse': _enc(
    pydicom.uid.ExplicitVRLittleEndian,
    lambda p: (255 - p, {'attrs': {'PresentationLUTShape': 'INVERSE'}}),
  ),
  # MONOCHROME1 with Presentation LUT Shape INVERSE saying the same: inverted once.
  'explicit_8bit_mono1_inverse': _enc(
    pydicom.uid.ExplicitVRLittleEndian,
    lambda p: (
      255 - p,
      {'photometric': 'MONOCHROME1', 'attrs': {'PresentationLUTShape': 'INVERSE'}},
    ),
  ),
  # A bare data set without the 128-byte preamble and file meta (implicit VR).
  'no_preamble_8bit': _enc(pydicom.uid.ImplicitVRLittleEndian, lambda p: (p, {'preamble': False})),
  # JPEG-LS near-lossless, NEAR=2: every stored value within 2 (8 bits: 2 grey levels).
  'jpegls_near_lossless_8bit': _enc(pydicom.uid.JPEGLSNearLossless, lambda p: (p, {}), tol=2),
  # Lossy: JPEG 2000 at 10:1 and JPEG Baseline quality 95 (tolerances: max abs difference).
  'j2k_lossy_8bit_10to1': _enc(pydicom.uid.JPEG2000, lambda p: (p, {'lossy_ratio': 10}), tol=40),
  'jpeg_baseline_8bit_q95': _enc(pydicom.uid.JPEGBaseline8Bit, lambda p: (p, {}), tol=16),
}


def write_encoding(path, png: np.ndarray, name: str) -> str:
  """`png` (uint8 (H, W)) written in `ENCODINGS[name]`."""
  syntax, fn, _, _ = ENCODINGS[name]
  stored, kw = fn(png)
  return write(path, stored, syntax=syntax, **kw)


# Every Basic Profile (PS3.15 Annex E) attribute a test can set with a marker: names, IDs, dates,
# times, accession and study numbers, UIDs, institution, station, people, descriptions, comments.
IDENTIFYING = {
  'PatientName': f'{MARKER}^PATIENT',
  'PatientID': f'{MARKER}-PID',
  'OtherPatientIDs': f'{MARKER}-OTHER',
  'PatientBirthDate': '19010203',
  'PatientBirthTime': '010203',
  'PatientSex': 'O',
  'PatientAge': '099Y',
  'PatientAddress': f'{MARKER} STREET',
  'PatientTelephoneNumbers': f'{MARKER}-TEL',
  'PatientComments': f'{MARKER} comment',
  'PatientMotherBirthName': f'{MARKER}^MOTHER',
  'MilitaryRank': MARKER,
  'EthnicGroup': MARKER,
  'Occupation': MARKER,
  'AdditionalPatientHistory': f'{MARKER} history',
  'StudyDate': '19020304',
  'SeriesDate': '19020304',
  'AcquisitionDate': '19020304',
  'ContentDate': '19020304',
  'StudyTime': '013859.271828',
  'SeriesTime': '013859.271828',
  'AcquisitionTime': '013859.271828',
  'ContentTime': '013859.271828',
  'AccessionNumber': f'{MARKER}AC',
  'StudyID': f'{MARKER}S'[:16],
  'StudyDescription': f'{MARKER} study',
  'SeriesDescription': f'{MARKER} series',
  'ProtocolName': f'{MARKER} protocol',
  'ImageComments': f'{MARKER} image comment',
  'RequestedProcedureDescription': f'{MARKER} procedure',
  'PerformedProcedureStepDescription': f'{MARKER} step',
  'InstitutionName': f'{MARKER} HOSPITAL',
  'InstitutionAddress': f'{MARKER} ROAD',
  'InstitutionalDepartmentName': f'{MARKER} DEPT',
  'StationName': f'{MARKER}ST'[:16],
  'DeviceSerialNumber': f'{MARKER}SN',
  'ReferringPhysicianName': f'{MARKER}^REFERRER',
  'PerformingPhysicianName': f'{MARKER}^PERFORMER',
  'NameOfPhysiciansReadingStudy': f'{MARKER}^READER',
  'OperatorsName': f'{MARKER}^OPERATOR',
  'RequestingPhysician': f'{MARKER}^REQUESTER',
  'StudyInstanceUID': MARKER_UID + '.1',
  'SeriesInstanceUID': MARKER_UID + '.2',
  'SOPInstanceUID': MARKER_UID + '.3',
  'FrameOfReferenceUID': MARKER_UID + '.4',
}
# Markers of the dates and times above (no other test value looks like them).
DATE_MARKERS = ('19010203', '19020304', '013859.271828')


def identifying_attrs() -> dict:
  """`IDENTIFYING` as write() attrs (MediaStorageSOPInstanceUID follows SOPInstanceUID)."""
  return dict(IDENTIFYING)


def add_private(path: str) -> None:
  """Adds a private block with a marker value to a written (uncompressed or not) file."""
  ds = pydicom.dcmread(path)
  block = ds.private_block(0x0009, f'{MARKER} CREATOR', create=True)
  block.add_new(0x01, 'LO', f'{MARKER} private value')
  ds.save_as(path, enforce_file_format=True)


def markers() -> tuple[str, ...]:
  """Every string whose presence in an output means a header value leaked."""
  return (MARKER, MARKER.lower(), MARKER_UID, *DATE_MARKERS)
