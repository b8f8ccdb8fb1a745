"""Cheap, explainable checks that an image file could be a chest X-ray, before any model runs.

Each check has a name (the `ood_reason` of `launch.predict`'s CSV) and a number it is decided on:

- `colour`: the picture is not grey. Mean over pixels of (largest - smallest channel), in grey
  levels, on the file's own colours (before `images.decode_grey` turns it grey; transparent pixels
  composited onto black as there). Radiographs are grey (R = G = B, or a mode without colour); a
  grey film saved as JPEG keeps ~1 level of chroma noise. Flagged above `Thresholds.colour`.
- `near_constant`: almost no contrast. Spread between the 1st and 99th percentile of the grey
  pixels; blank, transparent and single-colour files have ~0. Flagged below
  `Thresholds.min_spread`.
- `aspect_ratio`: long side / short side; chest films are 1.0-1.3 (14 x 17 inch cassettes).
  Flagged above `Thresholds.max_aspect` (the model's square resize would distort it badly).
- `too_small`: short side far below the model's input side (upsampling invents detail). Flagged
  below `Thresholds.min_side_fraction` x image_size.

What a DICOM header says (`jaxcxr.data.dicom`'s allowlisted facts), each its own reason; a file
without the attribute is not flagged by it:

- `header_modality`: Modality (0008,0060) is not a radiograph (`RADIOGRAPH_MODALITIES`: CR, DX,
  DR, RG); CT, MR, US, MG, OT, ... are flagged.
- `header_body_part`: BodyPartExamined (0018,0015) names a part that is not the chest
  (`CHEST_WORDS`: CHEST, THORAX, TORAX, PECHO, LUNG, ...).
- `header_view`: ViewPosition (0018,5101) (or the ViewCodeSequence meaning) is lateral or oblique
  (LL, RL, LLO, RLO, LATERAL, ...): the model saw frontal (PA / AP) films only.
- `header_frames`: NumberOfFrames (0028,0008) > 1 (frame 0 is what the model sees).
- `header_colour`: SamplesPerPixel (0028,0002) > 1 or a colour PhotometricInterpretation (RGB,
  YBR_*, PALETTE COLOR): radiographs are monochrome.
- `header_for_processing`: PresentationIntentType (0008,0068) or ImageType says FOR PROCESSING:
  raw detector data, before the vendor's processing that every training film had.

A file that cannot be decoded stays an `images.ImageError` (the checks need pixels). The checks
never change the pixels the model sees: `inspect_bytes` returns the same grey array as
`images.decode_grey`. The feature-space score (`jaxcxr.evaluation.ood`) catches what they cannot.
"""

import dataclasses
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from jaxcxr.data import images as images_lib

PathLike = str | os.PathLike

PIXEL_REASONS = ('colour', 'near_constant', 'aspect_ratio', 'too_small')
HEADER_REASONS = (
  'header_modality',
  'header_body_part',
  'header_view',
  'header_frames',
  'header_colour',
  'header_for_processing',
)
REASONS = PIXEL_REASONS + HEADER_REASONS

# Modalities of a projection radiograph: computed / digital radiography (DR: an older, non-standard
# code some archives still write), RG: radiographic imaging (digitised film).
RADIOGRAPH_MODALITIES = ('CR', 'DX', 'DR', 'RG')
# Words of a BodyPartExamined that mean the chest (English, Spanish / Portuguese, German, French).
CHEST_WORDS = ('CHEST', 'THORA', 'TORAX', 'TÓRAX', 'PECHO', 'LUNG', 'PULM', 'BRUST', 'POITRINE')
# ViewPosition values that are not a frontal film.
NON_FRONTAL_VIEWS = ('LL', 'RL', 'LLO', 'RLO', 'LAT', 'LATERAL', 'OBLIQUE')

# Colour statistics are computed on a copy at most this many pixels on a side (a 4000 px photo
# costs a thumbnail, not 48 MB of RGB).
_COLOUR_SIDE = 256
# Pixels sampled for the percentile spread (a regular subsample of larger images).
_SPREAD_SAMPLES = 1 << 16


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Where each check flags an image (module docstring; docs/OOD.md has the measurements).

  Attributes:
    colour: mean channel spread (grey levels, 0-255) above which an image is colour.
    min_spread: 1st-99th percentile grey spread (grey levels) below which it is near-constant.
    max_aspect: long / short side above which the aspect ratio is extreme.
    min_side_fraction: short side below this fraction of the model's input side is too small.
  """

  colour: float = 6.0
  min_spread: float = 10.0
  max_aspect: float = 2.0
  min_side_fraction: float = 0.5


DEFAULT_THRESHOLDS = Thresholds()


@dataclasses.dataclass
class Inspection:
  """What the checks saw in one image.

  Attributes:
    grey: uint8 (H, W), exactly `images.decode_grey` of the file.
    reasons: names (of `REASONS`) of the checks that flagged it, in `REASONS` order; empty = passed.
    measures: the number each check decided on: {'colour', 'spread', 'aspect', 'short_side'}.
    header: a DICOM file's allowlisted header facts (`jaxcxr.data.dicom.HEADER_KEYS`), else None.
  """

  grey: np.ndarray
  reasons: list[str]
  measures: dict[str, float]
  header: dict | None = None

  @property
  def passed(self) -> bool:
    return not self.reasons


def colour_spread(rgb: np.ndarray) -> float:
  """Mean over pixels of (max - min) over the channels of uint8 (H, W, 3): 0 for grey."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] < 3:
    return 0.0
  rgb = rgb[..., :3].astype(np.int16)
  return float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1)))


def grey_spread(grey: np.ndarray) -> float:
  """99th minus 1st percentile of the pixels of uint8 (H, W), in grey levels."""
  flat = np.asarray(grey).reshape(-1)
  if flat.size > _SPREAD_SAMPLES:
    flat = flat[:: flat.size // _SPREAD_SAMPLES]
  lo, hi = np.percentile(flat, [1.0, 99.0])
  return float(hi - lo)


def _colour_pixels(im: Image.Image) -> np.ndarray | None:
  """uint8 (h, w, 3) of an opened colour-capable image (alpha composited onto black), None if grey.

  `im` is freshly opened (not loaded), so a JPEG decodes at a reduced scale (`draft`).
  """
  if im.mode in ('L', '1', 'LA', 'La', 'I', 'F') or im.mode.startswith('I;'):
    return None
  im.draft('RGB', (_COLOUR_SIDE, _COLOUR_SIDE))  # a no-op for formats without reduced decoding
  im = ImageOps.exif_transpose(im)
  im.thumbnail((_COLOUR_SIDE, _COLOUR_SIDE))
  im = im.convert('RGBA')
  black = Image.new('RGBA', im.size, (0, 0, 0, 255))
  return np.asarray(Image.alpha_composite(black, im).convert('RGB'))


def file_colour(data: bytes) -> float:
  """`colour_spread` of an encoded image's own colours (0 for grey modes); decode errors -> 0.

  Only the colour statistic: `images.decode_grey` reports unreadable files.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      pixels = _colour_pixels(Image.open(io.BytesIO(data)))
  except Exception:  # pylint: disable=broad-except  (decode_grey names the real problem)
    return 0.0
  return 0.0 if pixels is None else colour_spread(pixels)


def check(
  grey: np.ndarray, colour: float, image_size: int, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> tuple[list[str], dict[str, float]]:
  """Runs the checks on a decoded grey image and its colour statistic.

  Args:
    grey: uint8 (H, W) as `images.decode_grey` returns it.
    colour: `colour_spread` of the file's colours (0 for a grey file).
    image_size: the model's input side.
    thresholds: where each check flags.

  Returns:
    (reasons in `REASONS` order, measures {'colour', 'spread', 'aspect', 'short_side'}).
  """
  h, w = grey.shape[:2]
  measures = {
    'colour': float(colour),
    'spread': grey_spread(grey),
    'aspect': max(h, w) / max(1, min(h, w)),
    'short_side': float(min(h, w)),
  }
  flagged = {
    'colour': measures['colour'] > thresholds.colour,
    'near_constant': measures['spread'] < thresholds.min_spread,
    'aspect_ratio': measures['aspect'] > thresholds.max_aspect,
    'too_small': measures['short_side'] < thresholds.min_side_fraction * image_size,
  }
  return [r for r in PIXEL_REASONS if flagged[r]], measures


def header_reasons(header: dict | None) -> list[str]:
  """The `HEADER_REASONS` a DICOM file's header facts flag (module docstring), in order."""
  if not header:
    return []
  modality = header.get('modality') or ''
  body = header.get('body_part') or ''
  view = (header.get('view_position') or '').replace(' ', '')
  photometric = header.get('photometric') or ''
  intent = {header.get('presentation_intent') or '', header.get('image_type') or ''}
  flagged = {
    'header_modality': bool(modality) and modality not in RADIOGRAPH_MODALITIES,
    'header_body_part': bool(body) and not any(w in body for w in CHEST_WORDS),
    'header_view': view in NON_FRONTAL_VIEWS,
    'header_frames': int(header.get('frames') or 1) > 1,
    'header_colour': int(header.get('samples_per_pixel') or 1) > 1
    or photometric not in ('', 'MONOCHROME1', 'MONOCHROME2'),
    'header_for_processing': 'FOR PROCESSING' in intent,
  }
  return [r for r in HEADER_REASONS if flagged[r]]


def inspect_bytes(
  data: bytes,
  *,
  name: PathLike,
  image_size: int,
  thresholds: Thresholds = DEFAULT_THRESHOLDS,
  max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
  remedy: str = '',
) -> Inspection:
  """Decodes encoded image bytes to grey (as `images.decode_grey`) and runs the checks.

  Raises:
    images.ImageError: the bytes are not a readable image (the checks need pixels).
  """
  decoded = images_lib.decode(data, name=name, max_pixels=max_pixels, remedy=remedy)
  colour = file_colour(data) if decoded.colour is None else decoded.colour
  reasons, measures = check(decoded.grey, colour, image_size, thresholds)
  reasons += header_reasons(decoded.header)
  return Inspection(decoded.grey, reasons, measures, decoded.header)


def inspect_file(
  path: PathLike,
  *,
  image_size: int,
  thresholds: Thresholds = DEFAULT_THRESHOLDS,
  max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
  remedy: str = '',
) -> Inspection:
  """`inspect_bytes` of a file (read once).

  Raises:
    images.ImageError: unreadable or undecodable file, naming it.
  """
  return inspect_bytes(
    images_lib.read_bytes(path, remedy),
    name=path,
    image_size=image_size,
    thresholds=thresholds,
    max_pixels=max_pixels,
    remedy=remedy,
  )


def encode_png(pixels: np.ndarray) -> bytes:
  """uint8 (H, W), (H, W, 3) or (H, W, 4) -> PNG bytes (L, RGB or RGBA).

  zlib level 1: the same pixels, 2.6x faster to write than Pillow's default 6 (224 px pictures,
  measured), ~10 % larger.
  """
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()
