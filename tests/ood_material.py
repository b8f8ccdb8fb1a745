"""Out-of-distribution image files for the tests, generated on the spot (no download).

The pictures come from `jaxcxr.data.ood_material` (the same material the report measures); this
helper writes them as files, the way a user would hand them to `launch.predict`, plus the
single cases the issue named (a blank RGBA PNG, a colour photo, a tinted film).
"""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from jaxcxr.data import ood_material

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
CXR_DEV = SHARED / 'cxr_dev'
CXR_EVAL = SHARED / 'cxr_eval'
NO_SHARED = (
  f'real data not found: {CXR_EVAL} and {CXR_DEV} (the shared data folder next to the '
  'checkout) are needed'
)


def write(path, pixels: np.ndarray, fmt: str = 'PNG') -> str:
  """Writes uint8 pixels ((H, W), (H, W, 3) or (H, W, 4)) as an image file; returns the path."""
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  image = Image.fromarray(np.ascontiguousarray(pixels, np.uint8))
  if fmt == 'JPEG' and image.mode == 'RGBA':
    image = image.convert('RGB')
  image.save(str(path), format=fmt)
  return str(path)


def blank_rgba(size: int = 64) -> np.ndarray:
  """The issue's case: a fully transparent RGBA canvas (predicted COVID at 0.93 before)."""
  return np.zeros((size, size, 4), np.uint8)


def write_set(folder, kind: str, n: int, size: int, seed: int = 0) -> list[str]:
  """Writes `n` generated pictures of `kind` (`ood_material.GENERATED`) as PNGs; their paths."""
  pictures = ood_material.generated(kind, n, size, seed)
  return [write(os.path.join(str(folder), f'{kind}_{i}.png'), p) for i, p in enumerate(pictures)]


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def real_films(folder: Path, n: int, seed: int = 0) -> list[str]:
  """`n` film paths drawn (deterministically) from a Kaggle-layout folder."""
  paths = sorted(str(p) for p in folder.rglob('*.png'))
  rng = np.random.default_rng(seed)
  return [paths[i] for i in sorted(rng.choice(len(paths), min(n, len(paths)), replace=False))]
