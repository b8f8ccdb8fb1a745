"""DICOM films: the pixels a radiologist's viewer shows, and the few header facts the checks need.

`read_film(data)` turns the bytes of a DICOM file into uint8 (H, W) grey, the same array a PNG of
the displayed film would give, then every caller treats it as a PNG film (`images.decode_grey`
dispatches here, so the dataset builder, explore, predict, evaluate, gradcam and fit_ood read
DICOM alike). The pipeline, in float32, with the attributes it reads:

1. Header first (`stop_before_pixels`): Rows (0028,0010) x Columns (0028,0011) above
   `max_pixels` is refused before any pixel data is decoded; a file without Rows / Columns /
   Pixel Data (7FE0,0010) (a DICOMDIR, a structured report) is refused naming its SOP class.
2. Frame 0 of Pixel Data decoded by pydicom with the decoder of its Transfer Syntax UID
   (0002,0010) (`DECODERS`; a syntax without an installed decoder is refused naming the package).
   NumberOfFrames (0028,0008) > 1: frame 0 only (the input checks flag it).
3. Modality LUT: Modality LUT Sequence (0028,3000) when present, else RescaleSlope (0028,1053) /
   RescaleIntercept (0028,1052) (identity when absent).
4. VOI: a VOI LUT Sequence (0028,3010) wins over WindowCenter (0028,1050) / WindowWidth (0028,1051)
   (first value of each) with VOILUTFunction (0028,1056) LINEAR (default), LINEAR_EXACT or SIGMOID
   (PS3.3 C.11.2.1.2). No VOI: data of BitsStored (0028,0101) <= 8 as stored (the value range of
   BitsStored and PixelRepresentation (0028,0103) onto 0..255: how the Kaggle PNGs were
   converted); deeper data get a window from the film's own 0.5th..99.5th percentiles
   (`AUTO_PERCENTILES`), leaving out PixelPaddingValue (0028,0120) [..PixelPaddingRangeLimit
   (0028,0121)] and the constant rows / columns of a padding border.
5. PhotometricInterpretation (0028,0004) MONOCHROME1 (bright = low value) is inverted once, after
   the VOI. PresentationLUTShape (2050,0020) INVERSE says the same for MONOCHROME1 and does not
   invert again; on MONOCHROME2 it inverts (PS3.3 C.11.6; dcmtk does the same).
6. Rounded to uint8. Colour data (SamplesPerPixel (0028,0002) 3, PALETTE COLOR) becomes grey by
   ITU-R 601 luma as Pillow does for an RGB PNG (the checks flag it).

Nothing else of the header is kept: `Film.header` is an allowlist (`HEADER_KEYS`) of technical
facts that identify no one. Errors are `DicomError(reason)` with no file name and no header value
(`images` adds the path the user gave). pydicom's warnings and log lines can quote header values
(a name, a date), so they are silenced for pydicom (module-level `_quiet_pydicom`).

Decoders (requirements.txt, wheels only): uncompressed and deflated (pydicom), RLE Lossless
(pylibjpeg-rle, MIT), JPEG Baseline and 8-bit JPEG Extended (Pillow, HPND), JPEG 2000
(pylibjpeg-openjpeg, MIT), JPEG Lossless (process 14, SV1) and JPEG-LS (python-gdcm, Apache-2.0
wrapper of BSD GDCM; pyjpegls, MIT wrapper of BSD CharLS, for JPEG-LS too). pylibjpeg-libjpeg
(GPLv3) is deliberately not used; 12-bit JPEG Extended (lossy 12-bit JPEG) is decoded by
libjpeg-turbo 3 through imagecodecs (BSD): pydicom's GDCM plugin refuses 12-bit JPEG, and GDCM's
own reader wraps the codec's undershoot below 0 to 4095 (measured).
"""

import dataclasses
import io
import logging
import warnings

import imagecodecs
import numpy as np
import pydicom
import pydicom.config
import pydicom.encaps
import pydicom.pixels
import pydicom.uid
from PIL import Image

PREAMBLE = b'DICM'  # at byte 128 of a DICOM file (PS3.10 7.1)
# Extensions that name a DICOM file; others are recognised by the preamble.
EXTENSIONS = ('.dcm', '.dicom', '.dic')

# The only header facts kept (Film.header); none identifies a patient, study, person or place.
HEADER_KEYS = (
  'photometric',
  'bits_stored',
  'bits_allocated',
  'rows',
  'columns',
  'frames',
  'samples_per_pixel',
  'pixel_spacing',
  'modality',
  'view_position',
  'body_part',
  'transfer_syntax',
  'presentation_intent',
  'image_type',
)

# Percentiles of the film's own values that window deep data without a VOI in the file.
AUTO_PERCENTILES = (0.5, 99.5)
_AUTO_SAMPLES = 1 << 18  # values sampled for the percentiles (a regular subsample)

# Preferred pydicom decoding plugin per transfer syntax (the fastest installed one measured by
# launch.benchmark_data --dicom); any other available plugin is the fallback.
_PREFERRED = {
  pydicom.uid.JPEGBaseline8Bit: 'pillow',
  pydicom.uid.RLELossless: 'pylibjpeg',
  pydicom.uid.JPEG2000Lossless: 'pylibjpeg',
  pydicom.uid.JPEG2000: 'pylibjpeg',
  pydicom.uid.JPEGExtended12Bit: 'gdcm',
  pydicom.uid.JPEGLossless: 'gdcm',
  pydicom.uid.JPEGLosslessSV1: 'gdcm',
  pydicom.uid.JPEGLSLossless: 'pyjpegls',
  pydicom.uid.JPEGLSNearLossless: 'pyjpegls',
}
# The pinned package (requirements.txt) that decodes a transfer syntax, for error messages.
DECODERS = {
  pydicom.uid.RLELossless: 'pylibjpeg-rle==2.2.0',
  pydicom.uid.JPEGBaseline8Bit: 'pillow==13.0.0',
  pydicom.uid.JPEGExtended12Bit: 'pillow==13.0.0 (8-bit) or imagecodecs==2026.3.6 (12-bit)',
  pydicom.uid.JPEGLossless: 'python-gdcm==3.2.6',
  pydicom.uid.JPEGLosslessSV1: 'python-gdcm==3.2.6',
  pydicom.uid.JPEGLSLossless: 'pyjpegls==1.5.1 or python-gdcm==3.2.6',
  pydicom.uid.JPEGLSNearLossless: 'pyjpegls==1.5.1 or python-gdcm==3.2.6',
  pydicom.uid.JPEG2000Lossless: 'pylibjpeg-openjpeg==2.6.0',
  pydicom.uid.JPEG2000: 'pylibjpeg-openjpeg==2.6.0',
  pydicom.uid.HTJ2KLossless: 'pylibjpeg-openjpeg==2.6.0',
  pydicom.uid.HTJ2KLosslessRPCL: 'pylibjpeg-openjpeg==2.6.0',
  pydicom.uid.HTJ2K: 'pylibjpeg-openjpeg==2.6.0',
}
_CONVERT = 'convert it to an uncompressed DICOM (e.g. gdcmconv --raw, or dcmtk dcmdjpeg)'


class DicomError(ValueError):
  """A DICOM file that cannot become a film; `reason` names no file and no header value."""

  def __init__(self, reason: str):
    self.reason = reason
    super().__init__(reason)


@dataclasses.dataclass
class Film:
  """A decoded DICOM film.

  Attributes:
    grey: uint8 (H, W), the displayed film (module docstring).
    header: the allowlisted facts (`HEADER_KEYS`).
    colour: mean channel spread (grey levels) of colour data, 0 for monochrome
      (`input_checks.colour_spread` of the 8-bit RGB).
  """

  grey: np.ndarray
  header: dict
  colour: float


def _quiet_pydicom() -> None:
  """pydicom's warnings and log lines may quote header values (an invalid name or date): off.

  Validation of values on reading is off too (pydicom would warn with the value); the reader
  below needs no value it would have rejected.
  """
  pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
  logging.getLogger('pydicom').setLevel(logging.CRITICAL + 1)
  warnings.filterwarnings('ignore', module=r'pydicom(\.|$)')


_quiet_pydicom()


def has_preamble(data: bytes) -> bool:
  """True for a DICOM file with its 128-byte preamble and 'DICM' (PS3.10 Part 10 files)."""
  return len(data) >= 132 and data[128:132] == PREAMBLE


def _pixel_tag_at(data: bytes, pos: int) -> bool:
  """Pixel Data (7FE0,0010) starts at `pos` (little or big endian)."""
  return data[pos : pos + 4] in (b'\xe0\x7f\x10\x00', b'\x7f\xe0\x00\x10')


def _read_header(data: bytes, force: bool) -> tuple[pydicom.Dataset, bool]:
  """(dataset without pixel data, whether Pixel Data follows). Raises DicomError."""
  fp = io.BytesIO(data)
  try:
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
  except Exception as e:  # pydicom raises many types; their text may quote header values
    raise DicomError(
      f'it is a DICOM file whose header cannot be read (truncated or corrupt; '
      f'{type(e).__name__}); export it again from the archive'
    ) from None
  return ds, _pixel_tag_at(data, fp.tell())


def headerless_dicom(data: bytes) -> bool:
  """A DICOM data set without the Part 10 preamble (raw export) that holds an image.

  Accepted only when pydicom reads it (force=True) with Rows, Columns and Pixel Data: random
  binary that pydicom would also 'read' has no such image.
  """
  if has_preamble(data) or len(data) < 16:
    return False
  try:
    ds, pixels = _read_header(data, force=True)
  except DicomError:
    return False
  return pixels and 'Rows' in ds and 'Columns' in ds and 'BitsAllocated' in ds


def _text(value, size: int = 16) -> str:
  """A code string, upper case, printable characters only, at most `size` characters."""
  if value is None:
    return ''
  if isinstance(value, pydicom.multival.MultiValue):
    value = '\\'.join(str(v) for v in value)
  s = ''.join(c for c in str(value) if c.isprintable()).strip().upper()
  return s[:size]


# ViewCodeSequence code meanings (SNOMED / SRT) -> view position, when ViewPosition is empty.
_VIEW_MEANINGS = (
  ('LATERAL', 'LATERAL'),
  ('POSTERO-ANTERIOR', 'PA'),
  ('POSTEROANTERIOR', 'PA'),
  ('ANTERO-POSTERIOR', 'AP'),
  ('ANTEROPOSTERIOR', 'AP'),
  ('OBLIQUE', 'OBLIQUE'),
)


def _view(ds: pydicom.Dataset) -> str:
  view = _text(ds.get('ViewPosition'))
  if view:
    return view
  for item in ds.get('ViewCodeSequence') or []:
    meaning = _text(item.get('CodeMeaning'), 64)
    for key, position in _VIEW_MEANINGS:
      if key in meaning:
        return position
  return ''


def _image_type(ds: pydicom.Dataset) -> str:
  """'FOR PROCESSING' / 'FOR PRESENTATION' when ImageType (0008,0008) says so, else ''."""
  values = ds.get('ImageType') or []
  values = [values] if isinstance(values, str) else list(values)
  for v in values:
    v = _text(v, 32)
    if v in ('FOR PROCESSING', 'FOR PRESENTATION'):
      return v
  return ''


def header_facts(ds: pydicom.Dataset) -> dict:
  """The allowlisted header facts (`HEADER_KEYS`) of a dataset; nothing else is read."""
  spacing = ds.get('PixelSpacing') or ds.get('ImagerPixelSpacing')
  try:
    spacing = [round(float(v), 6) for v in spacing][:2] if spacing else None
  except (TypeError, ValueError):
    spacing = None

  def number(key, default):
    try:
      v = ds.get(key)
      return int(v) if v not in (None, '') else default
    except (TypeError, ValueError):
      return default

  meta = getattr(ds, 'file_meta', None)
  syntax = str(meta.get('TransferSyntaxUID', '')) if meta is not None else ''
  return {
    'photometric': _text(ds.get('PhotometricInterpretation')),
    'bits_stored': number('BitsStored', number('BitsAllocated', 0)),
    'bits_allocated': number('BitsAllocated', 0),
    'rows': number('Rows', 0),
    'columns': number('Columns', 0),
    'frames': max(1, number('NumberOfFrames', 1)),
    'samples_per_pixel': number('SamplesPerPixel', 1),
    'pixel_spacing': spacing,
    'modality': _text(ds.get('Modality')),
    'view_position': _view(ds),
    'body_part': _text(ds.get('BodyPartExamined')),
    'transfer_syntax': syntax if pydicom.uid.UID(syntax).is_valid else '',
    'presentation_intent': _text(ds.get('PresentationIntentType'), 32),
    'image_type': _image_type(ds),
  }


def _syntax_name(uid: str) -> str:
  """'JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)'; standard UIDs only."""
  name = pydicom.uid.UID(uid).name
  return f"'{name}' ({uid})" if name != uid else f'{uid} (not a standard transfer syntax)'


def _sop_class(ds: pydicom.Dataset) -> str:
  """The SOP class's standard name (a DICOMDIR, an SR, ...), never an instance UID."""
  uid = ds.get('SOPClassUID') or getattr(ds, 'file_meta', {}).get('MediaStorageSOPClassUID')
  if not uid:
    return 'no SOP class'
  uid = pydicom.uid.UID(str(uid))
  return f"'{uid.name}'" if uid.name != str(uid) else 'a private SOP class'


def _decode_frame(data: bytes, syntax: str, bits_stored: int) -> np.ndarray:
  """Frame 0 of the pixel data (rows, cols[, samples]) with the preferred installed plugin."""
  uid = pydicom.uid.UID(syntax)
  if not uid.is_transfer_syntax:
    raise DicomError(
      f'its transfer syntax is {_syntax_name(syntax)}: no decoder reads it; {_CONVERT}'
    )
  if uid.is_compressed:
    try:
      decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
      raise DicomError(
        f'its transfer syntax {_syntax_name(syntax)} has no decoder in pydicom; {_CONVERT}'
      ) from None
    if not decoder.is_available:
      package = DECODERS.get(uid, 'a pydicom decoding plugin')
      raise DicomError(
        f'its transfer syntax {_syntax_name(syntax)} needs {package} to decode '
        f'(pip install -r requirements.txt), or {_CONVERT}'
      )
    if uid == pydicom.uid.JPEGExtended12Bit and bits_stored > 8:
      return _decode_jpeg12(data, syntax)
    plugins = decoder.available_plugins
    plugin = _PREFERRED.get(uid, '')
    plugin = plugin if plugin in plugins else ''
  else:
    plugin = ''
  try:
    return pydicom.pixels.pixel_array(
      io.BytesIO(data), index=0, decoding_plugin=plugin, transfer_syntax_uid=uid
    )
  except DicomError:
    raise
  except Exception as e:  # decoders raise many types; their text is not shown
    raise DicomError(
      f'its pixel data cannot be decoded ({_syntax_name(syntax)}, {type(e).__name__}): the file '
      f'is truncated or corrupt, or a variant the decoder does not support; export it again, or '
      f'{_CONVERT}'
    ) from None


def _decode_jpeg12(data: bytes, syntax: str) -> np.ndarray:
  """Frame 0 of a 12-bit JPEG Extended (process 4) film, by libjpeg-turbo 3 through imagecodecs.

  pydicom's only decoder for 12-bit lossy JPEG is pylibjpeg-libjpeg (GPLv3), its GDCM plugin
  refuses 12-bit, and GDCM's own reader wraps the codec's undershoot below 0 to 4095 (measured
  2026-12-06); libjpeg-turbo >= 3.0 decodes 12-bit JPEG (imagecodecs 2026.3.6, BSD).
  """
  try:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames))
    pixels = imagecodecs.jpeg8_decode(frame)
  except Exception as e:  # decoders raise many types; their text is not shown
    raise DicomError(
      f'its pixel data cannot be decoded ({_syntax_name(syntax)}, {type(e).__name__}): the file '
      f'is truncated or corrupt; export it again, or {_CONVERT}'
    ) from None
  if int(ds.get('PixelRepresentation', 0)) == 1:  # two's complement samples in the codestream
    bits = int(ds.get('BitsStored', 12))
    pixels = np.where(pixels >= 1 << (bits - 1), pixels.astype(np.int32) - (1 << bits), pixels)
  return pixels


def _lut(item, little_endian: bool, signed: bool) -> tuple[int, int, np.ndarray]:
  """(first mapped value, bits, float32 LUT data) of a Modality / VOI LUT item."""
  n, first, bits = (int(v) for v in item.LUTDescriptor)
  n = n or 65536
  if signed and first >= 32768:  # the descriptor's US/SS ambiguity (PS3.3 C.11.1.1.1)
    first -= 65536
  raw = item['LUTData'].value
  if isinstance(raw, bytes):
    table = np.frombuffer(raw, '<u2' if little_endian else '>u2')[:n]
  else:
    table = np.atleast_1d(np.asarray(raw, np.int64))[:n]
  if not len(table):
    raise DicomError('its LUT has no data (LUTData); export it again from the archive')
  return first, bits, table.astype(np.float32)


def _apply_lut(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
  """Values below `first` take the first entry, above the last entry the last (PS3.3 C.11.1)."""
  index = np.rint(x) - np.float32(first)
  np.clip(index, 0, len(table) - 1, out=index)
  return table[index.astype(np.int32)]


def _modality(stored: np.ndarray, ds: pydicom.Dataset, little: bool, signed: bool) -> np.ndarray:
  """Modality LUT (sequence, else rescale) of stored values -> float32."""
  seq = ds.get('ModalityLUTSequence')
  if seq:
    first, _, table = _lut(seq[0], little, signed)
    return _apply_lut(stored.astype(np.float32), first, table)
  x = stored.astype(np.float32)
  slope, intercept = (
    float(ds.get('RescaleSlope', 1) or 1),
    float(ds.get('RescaleIntercept', 0) or 0),
  )
  if slope != 1.0:
    x *= np.float32(slope)
  if intercept != 0.0:
    x += np.float32(intercept)
  return x


def _affine(x: np.ndarray, lo: float, scale: float, inplace: bool) -> np.ndarray:
  """(x - lo) * scale clipped to 0..255, in float32 (in `x`'s own memory when `inplace`)."""
  y = x if inplace else x.copy()
  y -= np.float32(lo)
  y *= np.float32(scale)
  return np.clip(y, 0, 255, out=y)


def window(
  x: np.ndarray, center: float, width: float, function: str = 'LINEAR', *, inplace: bool = False
) -> np.ndarray:
  """VOI window of float32 values onto float32 0..255 (PS3.3 C.11.2.1.2 / C.11.2.1.3).

  LINEAR: width >= 1, edges at c - 0.5 -+ (w - 1) / 2; LINEAR_EXACT: edges at c -+ w / 2;
  SIGMOID: 255 / (1 + exp(-4 (x - c) / w)). `inplace` reuses `x`'s memory (a 4000 px film: 64 MB
  less at the peak).
  """
  center, width = float(center), float(width)
  if function == 'SIGMOID':
    if width <= 0:
      raise DicomError(f'its SIGMOID window has width {width} (must be > 0); fix WindowWidth')
    y = x if inplace else x.copy()
    y -= np.float32(center)
    y *= np.float32(-4.0 / width)
    np.clip(y, -80, 80, out=y)  # exp stays finite in float32 (255 / (1 + e^80) is 0 anyway)
    np.exp(y, out=y)
    y += np.float32(1.0)
    return np.divide(np.float32(255.0), y, out=y)
  if function == 'LINEAR_EXACT':
    if width <= 0:
      raise DicomError(f'its LINEAR_EXACT window has width {width} (must be > 0)')
    lo, scale = center - width / 2, 255.0 / width
  else:
    if width < 1:
      raise DicomError(f'its LINEAR window has width {width} (must be >= 1); fix WindowWidth')
    if width == 1:  # a threshold at c - 0.5
      return np.where(x > np.float32(center - 0.5), np.float32(255), np.float32(0))
    lo, scale = center - 0.5 - (width - 1) / 2, 255.0 / (width - 1)
  return _affine(x, lo, scale, inplace)


def _first(value) -> float:
  """The first of a multi-valued number (WindowCenter '40\\400' -> 40.0)."""
  return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """lo -> 0, hi -> 255, clipped (hi < lo flips), in `x`'s memory."""
  if hi == lo:
    hi = lo + 1.0
  return _affine(x, lo, 255.0 / (hi - lo), inplace=True)


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
  bits = int(ds.get('BitsStored') or ds.get('BitsAllocated') or 8)
  if int(ds.get('PixelRepresentation') or 0):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
  return 0, (1 << bits) - 1


def _padding_mask(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
  """True for pixels of PixelPaddingValue [..PixelPaddingRangeLimit] (stored values); None."""
  pad = ds.get('PixelPaddingValue')
  if pad is None or isinstance(pad, bytes):
    return None
  limit = ds.get('PixelPaddingRangeLimit')
  lo, hi = (pad, pad) if limit is None or isinstance(limit, bytes) else sorted((pad, limit))
  return (stored >= lo) & (stored <= hi)


def border_box(x: np.ndarray) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of `x` without its constant rows / columns at the edges."""
  rows = x.max(axis=1) != x.min(axis=1)
  cols = x.max(axis=0) != x.min(axis=0)
  if not rows.any() or not cols.any():
    return 0, x.shape[0], 0, x.shape[1]
  r, c = np.flatnonzero(rows), np.flatnonzero(cols)
  return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


def auto_window(x: np.ndarray, padding: np.ndarray | None) -> tuple[float, float]:
  """`AUTO_PERCENTILES` of the film's values without its padding pixels and padding border."""
  t, b, left, right = border_box(x)
  inner = x[t:b, left:right]
  values = inner[~padding[t:b, left:right]] if padding is not None else inner.reshape(-1)
  if not values.size:
    values = x.reshape(-1)
  step = max(1, values.size // _AUTO_SAMPLES)
  lo, hi = np.percentile(values[::step], AUTO_PERCENTILES)
  return float(lo), float(hi)


def _voi(x: np.ndarray, stored: np.ndarray, ds, little: bool, signed: bool) -> np.ndarray:
  """VOI of modality values -> float32 0..255 (module docstring, step 4)."""
  seq = ds.get('VOILUTSequence')
  if seq:
    first, bits, table = _lut(seq[0], little, signed)
    top = float((1 << max(1, min(bits, 16))) - 1)
    if table.max() > top:  # a descriptor that undersells its data: the data's own depth
      top = float((1 << int(np.ceil(np.log2(float(table.max()) + 1)))) - 1)
    return _apply_lut(x, first, table * np.float32(255.0 / top))
  centers, widths = ds.get('WindowCenter'), ds.get('WindowWidth')
  if centers not in (None, '') and widths not in (None, ''):
    function = _text(ds.get('VOILUTFunction')) or 'LINEAR'
    if function not in ('LINEAR', 'LINEAR_EXACT', 'SIGMOID'):
      function = 'LINEAR'  # unknown functions: the default (PS3.3 C.11.2.1.3)
    return window(x, _first(centers), _first(widths), function, inplace=True)
  bits = int(ds.get('BitsStored') or ds.get('BitsAllocated') or 8)
  if bits <= 8:  # as stored: the modality values of the stored range onto 0..255
    lo, hi = _modality(np.asarray(_stored_range(ds)), ds, little, signed)
    return _stretch(x, float(lo), float(hi))
  return _stretch(x, *auto_window(x, _padding_mask(stored, ds)))


def _colour_to_grey(frame: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float]:
  """(grey uint8, colour spread) of RGB / palette data: 8-bit RGB, then Pillow's 601 luma."""
  if _text(ds.get('PhotometricInterpretation')) == 'PALETTE COLOR':
    frame = pydicom.pixels.apply_color_lut(frame, ds)
  rgb = frame.astype(np.float32)
  if rgb.ndim == 2:
    rgb = np.repeat(rgb[..., None], 3, axis=-1)
  top = float(rgb.max())
  bits = int(ds.get('BitsStored') or 8)
  scale = 255.0 / ((1 << bits) - 1) if bits > 8 or top > 255 else 1.0
  if top * scale > 255:
    scale = 255.0 / top
  rgb8 = np.clip(np.rint(rgb[..., :3] * np.float32(scale)), 0, 255).astype(np.uint8)
  step = max(1, max(rgb8.shape[:2]) // 256)
  small = rgb8[::step, ::step].astype(np.int16)
  spread = float(np.mean(small.max(axis=-1) - small.min(axis=-1)))
  return np.asarray(Image.fromarray(rgb8, 'RGB').convert('L')), spread


def read_film(data: bytes, *, max_pixels: int) -> Film:
  """Decodes the bytes of a DICOM file into the displayed film (module docstring).

  Args:
    data: the file's bytes (with or without the Part 10 preamble).
    max_pixels: Rows x Columns above this are refused before the pixel data is decoded.

  Returns:
    Film(grey uint8 (H, W), header (allowlisted facts), colour spread).

  Raises:
    DicomError: unreadable header, no image, too large, no decoder, undecodable pixel data.
  """
  force = not has_preamble(data)
  ds, has_pixels = _read_header(data, force)
  header = header_facts(ds)
  rows, cols = header['rows'], header['columns']
  if not rows or not cols or not has_pixels:
    raise DicomError(
      f'it is a DICOM file without an image ({_sop_class(ds)}: no Rows / Columns / Pixel Data; '
      'a DICOMDIR, a report or a truncated file); give the image files of the study instead'
    )
  if rows * cols > max_pixels:
    raise DicomError(
      f'it is {cols}x{rows} = {rows * cols / 1e6:.1f} megapixels, above the limit of '
      f'{max_pixels / 1e6:.1f} MP (config.data.max_image_pixels; a decompression bomb or a '
      'wrong file); it was not decoded'
    )
  meta = getattr(ds, 'file_meta', None)
  syntax = str(meta.get('TransferSyntaxUID', '')) if meta is not None else ''
  if not syntax:  # a raw data set: pydicom guessed the encoding (implicit / explicit VR)
    syntax = (
      pydicom.uid.ImplicitVRLittleEndian
      if ds.is_implicit_VR
      else pydicom.uid.ExplicitVRLittleEndian
    )
  frame = _decode_frame(data, syntax, header['bits_stored'])
  if frame.shape[:2] != (rows, cols):
    raise DicomError(
      f'its pixel data is {frame.shape[:2]}, not Rows x Columns {(rows, cols)}; export it again'
    )
  photometric = header['photometric']
  if frame.ndim == 3 or photometric not in ('MONOCHROME1', 'MONOCHROME2', ''):
    grey, colour = _colour_to_grey(frame, ds)
    return Film(np.ascontiguousarray(grey), header, colour)
  little = pydicom.uid.UID(syntax).is_little_endian is not False
  signed = bool(int(ds.get('PixelRepresentation') or 0))
  x = _modality(frame, ds, little, signed)
  y = _voi(x, frame, ds, little, signed)
  inverse = _text(ds.get('PresentationLUTShape')) == 'INVERSE'
  if photometric == 'MONOCHROME1' or inverse:  # MONOCHROME1 + INVERSE: the same fact, once
    np.subtract(np.float32(255.0), y, out=y)
  np.rint(y, out=y)
  grey = np.clip(y, 0, 255, out=y).astype(np.uint8)
  return Film(np.ascontiguousarray(grey), header, 0.0)


def describe(header: dict) -> str:
  """One line of header facts for reports: 'DICOM CR PA CHEST MONOCHROME1 10-bit, JPEG 2000'."""
  syntax = header.get('transfer_syntax') or ''
  name = pydicom.uid.UID(syntax).name if syntax else ''
  parts = [
    'DICOM',
    header.get('modality') or '',
    header.get('view_position') or '',
    header.get('body_part') or '',
    header.get('photometric') or '',
    f'{header.get("bits_stored")}-bit',
  ]
  return ' '.join(p for p in parts if p) + (f', {name}' if name else '')
