"""Out-of-distribution pictures for checking the OOD score, with no download.

Every picture is a uint8 array as a file would hold it: (H, W) grey, (H, W, 3) colour or
(H, W, 4) with alpha, so it goes through the same decode and input checks as a user's file
(`jaxcxr.data.input_checks.encode_png` turns it into one).

Generated (`generated(kind, n, size, seed)`), each set varied so that a score cannot learn one
picture:
- `noise`: grey white noise (uniform or Gaussian at a random level and contrast) or low-pass
  noise (white noise blurred at a random scale: cloudy textures).
- `blank`: one grey level, transparent RGBA, or one level with +-1 of noise.
- `gradient`: smooth linear (random angle) or radial ramps between two random grey levels.
- `text`: lines of words in matplotlib's DejaVu fonts (drawn by Pillow) at random sizes, dark on
  light or light on dark.
- `photos`, `photos_grey`: random crops of the natural photos shipped inside installed packages
  (scikit-learn's `china.jpg` and `flower.jpg`, matplotlib's `grace_hopper.jpg`), in colour and
  converted to grey. Three source photos only: crops vary, subjects do not.
- `mri`: crops and flips of matplotlib's sample MRI slice (`s1045.ima.gz`, another modality; one
  source slice).
- `phantom`: the built-in phantom radiographs (`jaxcxr.data.phantom`), OOD for a real-data model.

Transformed films (`transformed(kind, films, seed)`) of in-distribution X-rays: `rot90` (90 or 270
degrees), `inverted` (255 - x), `tinted` (a random colour cast, RGB), `corner_crop` (one corner,
30-40 % of each side).
"""

import functools
import gzip
import importlib.util
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxcxr.data import phantom

GENERATED = ('noise', 'blank', 'gradient', 'text', 'photos', 'photos_grey', 'mri', 'phantom')
TRANSFORMS = ('rot90', 'inverted', 'tinted', 'corner_crop')

_WORDS = (
  'patient',
  'report',
  'the',
  'chest',
  'invoice',
  'total',
  'meeting',
  'notes',
  'quantum',
  'river',
  'model',
  'figure',
  'table',
  'results',
  'version',
  'hello',
  'world',
  'data',
  'summary',
  'page',
  '2026',
  'TODO',
  'lorem',
  'ipsum',
  'dolor',
  'amet',
  'x-ray',
  'N=12',
)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
  kind = rng.integers(3)
  if kind == 0:
    lo = rng.uniform(0, 128)
    x = rng.uniform(lo, rng.uniform(lo + 40, 255), (size, size))
  elif kind == 1:
    x = rng.normal(rng.uniform(60, 190), rng.uniform(15, 60), (size, size))
  else:  # low-pass: white noise at a coarse grid, upsampled smoothly
    cells = int(rng.integers(4, max(5, size // 4)))
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    x = np.asarray(Image.fromarray(coarse, mode='F').resize((size, size), Image.BICUBIC))
    x = (x - x.mean()) / (x.std() + 1e-6) * rng.uniform(20, 60) + rng.uniform(80, 170)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _blank(rng: np.random.Generator, size: int) -> np.ndarray:
  kind = rng.integers(3)
  if kind == 0:
    return np.full((size, size), rng.integers(256), np.uint8)
  if kind == 1:  # transparent RGBA: what a blank canvas exported from an editor holds
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = rng.integers(256, size=3)
    return out
  level = rng.integers(1, 255)
  return (level + rng.integers(-1, 2, (size, size))).astype(np.uint8)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
  if rng.random() < 0.5:
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
  else:
    cx, cy = rng.uniform(0.2, 0.8, 2)
    t = np.hypot(xx - cx, yy - cy)
  t = (t - t.min()) / (t.max() - t.min() + 1e-6)
  lo = rng.uniform(0, 195)
  a, b = rng.permutation([lo, rng.uniform(lo + 60, 255)])  # at least 60 grey levels apart
  return np.round(a + (b - a) * t).astype(np.uint8)


# The fonts matplotlib ships (found without importing it); Pillow's own font where it is absent.
_FONT_FILES = {
  'sans-serif': 'DejaVuSans.ttf',
  'serif': 'DejaVuSerif.ttf',
  'monospace': 'DejaVuSansMono.ttf',
}


@functools.lru_cache(maxsize=256)
def _font(family: str, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
  path = os.path.join(_package_dir('matplotlib'), 'mpl-data', 'fonts', 'ttf', _FONT_FILES[family])
  return ImageFont.truetype(path, px) if os.path.exists(path) else ImageFont.load_default(px)


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
  """A page of 2-8 lines of words, dark on light (60 %) or light on dark, in one of three faces.

  Drawn with Pillow: matplotlib drew the same pages 13x slower (20 vs 1.5 ms a page at 224 px).
  """
  light = rng.random() < 0.6
  fg, bg = (rng.uniform(0, 0.3), rng.uniform(0.8, 1.0))
  if not light:
    fg, bg = bg, fg
  page = Image.new('L', (size, size), round(bg * 255))
  draw = ImageDraw.Draw(page)
  lines = int(rng.integers(2, 9))
  # Em height 3-11 % of a 100 px canvas's side in points, drawn at `size` dots per canvas.
  px = max(1, round(rng.uniform(3, 11) * size / 100 * size / 72))
  for i in range(lines):
    words = ' '.join(rng.choice(_WORDS, int(rng.integers(1, 5))))
    x = rng.uniform(0.0, 0.3) * size
    baseline = (i + 1) / (lines + 1) * size
    family = str(rng.choice(['sans-serif', 'serif', 'monospace']))
    draw.text((x, baseline), words, fill=round(fg * 255), font=_font(family, px), anchor='ls')
  return np.asarray(page)


def _package_dir(name: str) -> str:
  """An installed package's folder without importing it ('' when it is not installed)."""
  spec = importlib.util.find_spec(name)
  return next(iter(spec.submodule_search_locations), '') if spec else ''


@functools.lru_cache(maxsize=1)
def photo_sources() -> tuple[np.ndarray, ...]:
  """The natural photos shipped in installed packages, uint8 RGB (H, W, 3); those found."""
  out = []
  for name in ('china.jpg', 'flower.jpg'):
    path = os.path.join(_package_dir('sklearn'), 'datasets', 'images', name)
    if os.path.exists(path):
      out.append(np.asarray(Image.open(path).convert('RGB')))
  path = os.path.join(_package_dir('matplotlib'), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
  if os.path.exists(path):
    out.append(np.asarray(Image.open(path).convert('RGB')))
  return tuple(out)


@functools.lru_cache(maxsize=1)
def mri_slice() -> np.ndarray | None:
  """matplotlib's sample MRI slice as uint8 (256, 256), or None when it is not installed."""
  path = os.path.join(_package_dir('matplotlib'), 'mpl-data', 'sample_data', 's1045.ima.gz')
  if not os.path.exists(path):
    return None
  with gzip.open(path) as f:
    a = np.frombuffer(f.read(), '>u2').reshape(256, 256).astype(np.float32)
  return np.round(a * (255.0 / max(1.0, a.max()))).astype(np.uint8)


def _crop(rng: np.random.Generator, image: np.ndarray, size: int, lo: float = 0.35) -> np.ndarray:
  """A random square-ish crop of lo-100 % of the short side, resized to `size`."""
  h, w = image.shape[:2]
  side = int(min(h, w) * rng.uniform(lo, 1.0))
  ch = min(h, int(side * rng.uniform(0.9, 1.1)))
  y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - side + 1)
  crop = image[y : y + ch, x : x + side]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return _resize(np.ascontiguousarray(crop), size)


def generated(kind: str, n: int, size: int, seed: int = 0) -> list[np.ndarray]:
  """`n` pictures of a generated kind (`GENERATED`), `size` px square, deterministic in `seed`.

  Returns [] for a kind whose source is not installed (photos, mri).
  """
  if kind not in GENERATED:
    raise ValueError(f'Unknown OOD set {kind!r}; choose from {GENERATED}.')
  rng = np.random.default_rng([seed, GENERATED.index(kind)])
  if kind == 'phantom':
    per = -(-n // 3)
    films = [phantom.render(k, per, image_size=size, rng=rng)['image'] for k in range(3)]
    return list(np.concatenate(films)[:n])
  if kind in ('photos', 'photos_grey'):
    sources = photo_sources()
    if not sources:
      return []
    crops = [_crop(rng, sources[i % len(sources)], size) for i in range(n)]
    if kind == 'photos_grey':
      crops = [np.asarray(Image.fromarray(c).convert('L')) for c in crops]
    return crops
  if kind == 'mri':
    mri = mri_slice()
    return [] if mri is None else [_crop(rng, mri, size, lo=0.6) for _ in range(n)]
  draw = {'noise': _noise, 'blank': _blank, 'gradient': _gradient, 'text': _text}[kind]
  return [draw(rng, size) for _ in range(n)]


def transformed(kind: str, films: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
  """Each uint8 (H, W) film transformed by `kind` (`TRANSFORMS`); deterministic in `seed`."""
  if kind not in TRANSFORMS:
    raise ValueError(f'Unknown transform {kind!r}; choose from {TRANSFORMS}.')
  rng = np.random.default_rng([seed, 100 + TRANSFORMS.index(kind)])
  out = []
  for film in films:
    film = np.asarray(film, np.uint8)
    if film.ndim == 3:
      film = film[..., 0]
    if kind == 'rot90':
      out.append(np.ascontiguousarray(np.rot90(film, k=int(rng.choice([1, 3])))))
    elif kind == 'inverted':
      out.append(255 - film)
    elif kind == 'tinted':  # each channel times its own gain: a colour cast of random hue
      w = rng.uniform(0, 1, 3)
      gains = 1.0 - rng.uniform(0.15, 0.5) * (w - w.min()) / (w.max() - w.min() + 1e-9)
      out.append(np.clip(np.round(film[..., None] * gains), 0, 255).astype(np.uint8))
    else:
      h, w = film.shape
      fh, fw = int(h * rng.uniform(0.3, 0.4)), int(w * rng.uniform(0.3, 0.4))
      y = 0 if rng.random() < 0.5 else h - fh
      x = 0 if rng.random() < 0.5 else w - fw
      out.append(np.ascontiguousarray(film[y : y + fh, x : x + fw]))
  return out
