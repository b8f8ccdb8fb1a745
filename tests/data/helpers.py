"""Small builders of test folders, PNG files and data configs for tests/data."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from configs import base

CXR_DEV = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'cxr_dev'
CXR_EVAL = CXR_DEV.parent / 'cxr_eval'  # external films: scored, never trained or tuned on


def save_png(path: Path, array: np.ndarray) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def random_image(rng: np.random.Generator, size: int) -> np.ndarray:
  return rng.integers(0, 256, (size, size), dtype=np.uint8)


def make_folder(
  root: Path, counts: dict[str, int], *, size: int = 16, seed: int = 0, subfolder: str = 'images'
) -> Path:
  """Kaggle layout with `counts[class]` distinct random PNGs per class (`<Class>/<subfolder>/`)."""
  rng = np.random.default_rng(seed)
  for name, n in counts.items():
    for i in range(1, n + 1):
      folder = root / name / subfolder if subfolder else root / name
      save_png(folder / f'{name}-{i}.png', random_image(rng, size))
  return root


def png_chunk(kind: bytes, data: bytes) -> bytes:
  return (
    struct.pack('>I', len(data))
    + kind
    + data
    + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
  )


def png_bomb_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height 8-bit grey pixels but carries only one compressed row."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  idat = zlib.compress(b'\0' * (width + 1))
  return (
    b'\x89PNG\r\n\x1a\n'
    + png_chunk(b'IHDR', ihdr)
    + png_chunk(b'IDAT', idat)
    + png_chunk(b'IEND', b'')
  )


def png_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'PNG')
  return buf.getvalue()


def data_config(data_dir: Path, **overrides):
  """config.data for tiny tests: small images, in-process loading, no progress bars."""
  d = base.get_data_config()
  d.data_dir = str(data_dir)
  d.image_size = 32
  d.num_workers = 0
  d.phantom.num_per_class = 12
  d.phantom.image_size = 32
  for k, v in overrides.items():
    node = d
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return d
