"""Decoding and validating image files into 8-bit grayscale arrays.

One decoder serves the dataset builder, the loader's eval resize and the inference CLIs, so an image
is turned into pixels the same way everywhere:

- Modes. `L` is used as is. `RGB`/palette/CMYK/YCbCr go through Pillow's ITU-R 601-2 luma
  (`L = 0.299 R + 0.587 G + 0.114 B`, exact for R=G=B images). `RGBA`/`LA`/palette-with-alpha are
  composited onto black first (transparent = no exposure). 16-bit and 32-bit integer or float images
  (`I;16*`, `I`, `F`) have no common display window, so they are linearly stretched from their own
  min..max onto 0..255 (a constant image becomes 0). `1` (bilevel) maps to 0/255.
- EXIF orientation is applied (phone photos of films).
- Size. The header is read first; images above `max_pixels` are refused before any pixel buffer is
  allocated (decompression-bomb guard), so a 20000x20000 PNG costs kilobytes, not 400 MB.
- Resizing to a square side uses Pillow bilinear with antialiasing, which is what torchvision's
  `Resize((S, S))` does on PIL images (the paper's pipeline); aspect ratio is not preserved.

- DICOM. Files with the `DICM` preamble, and preamble-less DICOM data sets Pillow cannot open,
  go to `jaxcxr.data.dicom` (modality LUT, VOI window, MONOCHROME1 inverted, 8 bits: the film as a
  viewer shows it), then take the same path as a PNG film. `decode` also returns the DICOM
  header's allowlisted facts for the input checks.

Every failure is an `ImageError` that names the file, the reason and what to do.
"""

import dataclasses
import hashlib
import io
import os
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps

from jaxcxr.data import dicom

PathLike = str | os.PathLike

DEFAULT_MAX_PIXELS = 64_000_000

# Remedy appended to errors raised while preparing a dataset.
PREPARE_REMEDY = (
  "Fix or delete the file, or set config.data.on_bad_image='skip' "
  '(--config.data.on_bad_image=skip) to skip it; skips are counted and '
  'reported in the dataset metadata.'
)


class ImageError(ValueError):
  """An image file that cannot be turned into a grayscale array; the message names the file."""

  def __init__(self, path: PathLike, reason: str, remedy: str = ''):
    self.path = str(path)
    self.reason = reason
    msg = f"Cannot use image file '{self.path}': {reason}."
    if remedy:
      msg += ' ' + remedy
    super().__init__(msg)


def _to_grey(im: Image.Image) -> np.ndarray:
  """Converts an opened Pillow image (any mode) to uint8 (H, W); see the module docstring."""
  mode = im.mode
  if mode == 'P' and 'transparency' in im.info:
    im = im.convert('RGBA')
    mode = 'RGBA'
  if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    im = im.convert('RGBA')
    black = Image.new('RGBA', im.size, (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(black, im).convert('L'))
  if mode == 'L':
    return np.asarray(im)
  if mode.startswith('I') or mode == 'F':
    a = np.asarray(im).astype(np.float64)
    if a.ndim == 3:  # e.g. 16-bit RGB decoded as a stack; average the channels
      a = a.mean(axis=-1)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
      return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
  return np.asarray(im.convert('L'))


@dataclasses.dataclass
class Decoded:
  """A decoded film: grey pixels and, for DICOM, the header's allowlisted facts.

  Attributes:
    grey: uint8 (H, W), C-contiguous.
    header: `dicom.Film.header` for a DICOM file, None for other formats.
    colour: the colour spread of DICOM colour data (0 for monochrome); None for other formats
      (`input_checks.file_colour` measures those).
  """

  grey: np.ndarray
  header: dict | None = None
  colour: float | None = None


def _decode_dicom(data: bytes, name: PathLike, max_pixels: int, remedy: str) -> Decoded:
  try:
    film = dicom.read_film(data, max_pixels=max_pixels)
  except dicom.DicomError as e:
    raise ImageError(name, e.reason, remedy) from None
  except MemoryError:
    raise ImageError(name, 'it is too large to decode in the memory available', remedy) from None
  return Decoded(film.grey, film.header, film.colour)


def decode(
  data: bytes, *, name: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, remedy: str = ''
) -> Decoded:
  """`decode_grey` plus the DICOM header facts (see `Decoded`).

  Raises:
    ImageError: as `decode_grey`.
  """
  if dicom.has_preamble(data):
    return _decode_dicom(data, name, max_pixels, remedy)
  try:
    return Decoded(_decode_pillow(data, name=name, max_pixels=max_pixels, remedy=remedy))
  except ImageError as e:
    if e.reason.startswith('it is not an image Pillow can identify') and dicom.headerless_dicom(
      data
    ):
      return _decode_dicom(data, name, max_pixels, remedy)
    raise


def decode_grey(
  data: bytes, *, name: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, remedy: str = ''
) -> np.ndarray:
  """Decodes encoded image bytes (PNG/JPEG/BMP/TIFF/DICOM/...) into uint8 (H, W).

  Args:
    data: the file's bytes.
    name: the file name used in error messages.
    max_pixels: images with more pixels are refused before decoding.
    remedy: sentence appended to error messages (what the user should do).

  Returns:
    uint8 array (H, W), C-contiguous.

  Raises:
    ImageError: empty, truncated, corrupt, non-image or too-large input.
  """
  return decode(data, name=name, max_pixels=max_pixels, remedy=remedy).grey


def _decode_pillow(data: bytes, *, name: PathLike, max_pixels: int, remedy: str) -> np.ndarray:
  """`decode_grey` of a format Pillow reads."""
  if not data:
    raise ImageError(name, 'the file is empty (0 bytes)', remedy)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
      raise ImageError(
        name,
        f'it is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of '
        f'{max_pixels / 1e6:.1f} MP (config.data.max_image_pixels; a decompression bomb or a '
        'wrong file); it was not decoded',
        remedy,
      )
    if w == 0 or h == 0:
      raise ImageError(name, f'it has an empty size {w}x{h}', remedy)
    im = ImageOps.exif_transpose(im)
    im.load()
    return np.ascontiguousarray(_to_grey(im))
  except ImageError:
    raise
  except Image.DecompressionBombError as e:  # Pillow's own guard fires first above ~179 MP
    raise ImageError(
      name,
      f'it is too large to decode safely ({e}); the limit is {max_pixels / 1e6:.1f} MP '
      '(config.data.max_image_pixels; a decompression bomb or a wrong file); it was not '
      'decoded',
      remedy,
    ) from None
  except Image.UnidentifiedImageError:
    head = data[:8]
    kind = 'text' if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else 'binary'
    raise ImageError(
      name, f'it is not an image Pillow can identify (starts with {kind} bytes {head!r})', remedy
    ) from None
  except (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError) as e:
    reason = str(e) or type(e).__name__
    if 'truncated' in reason.lower():
      reason = f'the file is truncated or incomplete ({reason})'
    else:
      reason = f'it is corrupt ({type(e).__name__}: {reason})'
    raise ImageError(name, reason, remedy) from None


def read_bytes(path: PathLike, remedy: str = '') -> bytes:
  """A file's bytes; an unreadable file is an `ImageError` naming it."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise ImageError(path, f'it cannot be read ({e.strerror or e})', remedy) from None


def load_grey(
  path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, remedy: str = ''
) -> np.ndarray:
  """Reads and decodes an image file into uint8 (H, W); see `decode_grey`."""
  return decode_grey(read_bytes(path, remedy), name=path, max_pixels=max_pixels, remedy=remedy)


def resize_grey(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 (H, W) to (size, size): Pillow bilinear with antialias (torchvision Resize)."""
  if image.shape == (size, size):
    return image
  out = Image.fromarray(image).resize((size, size), Image.BILINEAR)
  return np.asarray(out)


def content_hash(image: np.ndarray) -> str:
  """Hash of decoded pixels and shape: equal for the same picture stored in any file format."""
  h = hashlib.blake2b(digest_size=16)
  h.update(np.asarray(image.shape, np.int64).tobytes())
  h.update(np.ascontiguousarray(image, np.uint8).tobytes())
  return h.hexdigest()
