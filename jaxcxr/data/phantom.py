"""Synthetic chest-radiograph phantoms with known lesion positions (no download needed).

Each image is a PA chest film drawn with numpy, all images of a chunk at once:
thorax soft tissue, two lung fields (dark) with vascular texture, a heart shadow overlapping the
left lung (image right), spine/mediastinum, posterior ribs, a diaphragm dome,
exposure/gamma/gradient variation, quantum noise and, in some images of every class, a burned-in
corner marker.

Findings are added inside the lung fields (never behind the heart) and returned as a lesion mask:

- `COVID`: bilateral, peripheral, lower-zone patchy ground-glass opacities (4-7 soft blobs modulated
  by a patchy texture; at least one per lung).
- `Viral Pneumonia`: a perihilar reticular (interstitial) pattern in both lungs, or (30%) a lobar
  consolidation filling the lower or upper part of one lung.
- `Lung_Opacity` (4-class only): one or two compact dense focal opacities anywhere in one lung.
- `Normal`: none (empty mask).

Class shortcuts are avoided: exposure, gamma, anatomy, noise and the marker are drawn from the
same distributions for every class, and the exposure spread (~10 grey levels) dwarfs the mean
brightness a lesion adds (~1-2 grey levels), so only the local pattern and its position tell
classes apart.

Everything is deterministic from `seed`. Output layout (the Kaggle one plus masks):
`<Class>/images/<Class>-<i>.png` and `<Class>/lesion_masks/<Class>-<i>.png` (0/255), i from 1.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jaxcxr import CLASS_NAMES_3

# Bump when the drawing changes: prepared phantom datasets record it and are rebuilt on mismatch.
PHANTOM_VERSION = 1
MARKER_FILE = 'PHANTOM.json'
_CHUNK = 64  # images drawn per vectorised chunk (bounded memory; part of the determinism contract)


def _interp_matrix(size: int, cells: int) -> np.ndarray:
  """(size, cells) linear-interpolation matrix: a cells-grid signal sampled at `size` pixels."""
  t = np.linspace(0.0, cells - 1.0, size)
  return np.maximum(0.0, 1.0 - np.abs(t[:, None] - np.arange(cells)[None, :])).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
  """(n, size, size) float32 smooth noise, roughly unit variance, features ~size/cells pixels."""
  u = _interp_matrix(size, cells)
  g = rng.standard_normal((n, cells, cells)).astype(np.float32)
  out = np.einsum('ij,njk,lk->nil', u, g, u, optimize=True)
  return out / out.std(axis=(1, 2), keepdims=True).clip(1e-6)


def _blobs(cx, cy, sx, sy, amp, xs, ys):
  """Sum of axis-aligned Gaussians, (n, S, S); every argument but xs/ys is (n, K)."""
  gx = np.exp(-0.5 * ((xs[None, None, :] - cx[..., None]) / sx[..., None]) ** 2)
  gy = np.exp(-0.5 * ((ys[None, None, :] - cy[..., None]) / sy[..., None]) ** 2)
  return np.einsum(
    'nk,nkh,nkw->nhw',
    amp.astype(np.float32),
    gy.astype(np.float32),
    gx.astype(np.float32),
    optimize=True,
  )


def _sigmoid(x):
  return 0.5 + 0.5 * np.tanh(0.5 * x)  # no overflow for large |x|


def _u(rng, lo, hi, n):
  return rng.uniform(lo, hi, n).astype(np.float32)[:, None, None]


class _Grid(NamedTuple):
  """Pixel coordinates in [-1, 1]: side `s`, 1-D `xs`/`ys` (S,) and broadcastable xx (1, 1, S),
  yy (1, S, 1)."""

  s: int
  xs: np.ndarray
  ys: np.ndarray
  xx: np.ndarray
  yy: np.ndarray

  @classmethod
  def make(cls, s: int) -> '_Grid':
    coords = np.linspace(-1.0, 1.0, s, dtype=np.float32)
    return cls(s, coords, coords, coords[None, None, :], coords[None, :, None])


@dataclasses.dataclass
class _Chest:
  """The anatomy of n films: the image so far and where findings may go.

  Geometry arrays are (n, 1, 1) so they broadcast against (n, S, S) images.
  """

  img: np.ndarray  # float (n, S, S), 0 = black
  field: np.ndarray  # lung field not behind the heart, (n, S, S) in [0, 1]
  lung_mask: np.ndarray  # bool (n, S, S): inside a lung, outside the heart shadow
  cx: np.ndarray  # thorax centre x
  lcy: np.ndarray  # lung centre y
  lw: np.ndarray  # lung half-width
  lh: np.ndarray  # lung half-height
  lung_cx: tuple  # (image-left lung centre x, image-right lung centre x)

  @property
  def n(self) -> int:
    return self.img.shape[0]

  def lung_geometry(self):
    """(left lung cx, right lung cx, half-width, half-height, centre y), each (n,)."""
    return (
      self.lung_cx[0][:, 0, 0],
      self.lung_cx[1][:, 0, 0],
      self.lw[:, 0, 0],
      self.lh[:, 0, 0],
      self.lcy[:, 0, 0],
    )


def _thorax(rng, n: int, xx, yy):
  """Centre (cx, cy) of the chest and its soft-tissue envelope; the film's base grey level."""
  cx, cy = _u(rng, -0.05, 0.05, n), _u(rng, -0.02, 0.1, n)
  tw, th = _u(rng, 0.78, 0.92, n), _u(rng, 0.9, 1.05, n)
  sup = (np.abs(xx - cx) / tw) ** 4 + (np.abs(yy - cy - 0.05) / th) ** 4
  thorax = _sigmoid((1.0 - sup) * 12.0)
  img = 0.08 + _u(rng, 0.32, 0.42, n) * thorax
  return cx, cy, thorax, img


def _lungs_and_heart(rng, n: int, xx, yy, cx, cy):
  """Two lung fields and the heart shadow: (lungs, lung_hard, heart, dh, lung geometry)."""
  dx, lw, lh = _u(rng, 0.36, 0.42, n), _u(rng, 0.23, 0.28, n), _u(rng, 0.52, 0.62, n)
  lcy = cy + _u(rng, -0.12, -0.04, n)
  lungs, lung_hard = 0.0, 0.0
  centers = []
  for side in (-1.0, 1.0):  # image left (patient right), image right (patient left)
    lcx = cx + side * dx
    centers.append(lcx)
    # Flatter medial border and domed base: ellipse with a side-dependent width.
    wide = np.where((xx - lcx) * side > 0, lw * 1.1, lw * 0.9)
    d = ((xx - lcx) / wide) ** 2 + ((yy - lcy) / lh) ** 2
    lungs = lungs + _sigmoid((1.0 - d) * 14.0)
    lung_hard = lung_hard + (d < 0.92)
  heart_cx, heart_cy = cx + _u(rng, 0.08, 0.16, n), lcy + lh * _u(rng, 0.45, 0.6, n)
  hr = _u(rng, 0.2, 0.25, n)
  dh = ((xx - heart_cx) / (hr * 1.35)) ** 2 + ((yy - heart_cy) / hr) ** 2
  heart = _sigmoid((1.0 - dh) * 8.0)
  return lungs, lung_hard, heart, dh, (lcy, lw, lh, tuple(centers))


def _anatomy(rng, n: int, g: _Grid) -> _Chest:
  """Thorax, lungs with vessels, heart, spine and posterior ribs (same for every class)."""
  s, xx, yy = g.s, g.xx, g.yy
  cx, cy, thorax, img = _thorax(rng, n, xx, yy)
  lungs, lung_hard, heart, dh, (lcy, lw, lh, centers) = _lungs_and_heart(rng, n, xx, yy, cx, cy)
  field = np.clip(lungs * (1.0 - heart), 0.0, 1.0)  # lung field not behind the heart
  lung_mask = (lung_hard > 0) & (dh > 1.15)

  vessels = 0.02 * _smooth_noise(rng, n, s, 12) + 0.01 * _smooth_noise(rng, n, s, 28)
  img = img - _u(rng, 0.2, 0.28, n) * field + field * vessels
  img = img + _u(rng, 0.06, 0.1, n) * heart * thorax
  spine = _sigmoid((_u(rng, 0.07, 0.1, n) - np.abs(xx - cx)) * 60.0)
  img = img + (0.1 + 0.02 * np.cos(yy * 40.0)) * spine * thorax
  # Posterior ribs: periodic arcs curving down laterally, visible across the thorax.
  phase = yy - cy - _u(rng, 0.0, 0.12, n) - _u(rng, 0.6, 0.9, n) * (xx - cx) ** 2
  ribs = np.maximum(0.0, np.cos(2 * np.pi * phase / _u(rng, 0.15, 0.19, n))) ** 4
  img = img + _u(rng, 0.04, 0.07, n) * ribs * thorax * (1.0 - spine)
  return _Chest(
    img=img, field=field, lung_mask=lung_mask, cx=cx, lcy=lcy, lw=lw, lh=lh, lung_cx=centers
  )


def _covid(rng, c: _Chest, g: _Grid) -> np.ndarray:
  """Bilateral, peripheral, lower-zone patchy ground-glass opacities (4-7 blobs)."""
  n = c.n
  lcx_r, lcx_l, lw0, lh0, lcy0 = c.lung_geometry()
  k = 7
  count = rng.integers(4, k + 1, n)
  side = np.where(np.arange(k)[None, :] % 2 == 0, -1.0, 1.0) * np.ones((n, 1))
  center = np.where(side < 0, lcx_r[:, None], lcx_l[:, None])
  bx = center + side * lw0[:, None] * rng.uniform(0.4, 0.85, (n, k))  # lateral periphery
  by = lcy0[:, None] + lh0[:, None] * rng.uniform(0.0, 0.7, (n, k))  # lower zones
  sig = rng.uniform(0.06, 0.11, (n, k))
  amp = rng.uniform(0.14, 0.24, (n, k)) * (np.arange(k)[None, :] < count[:, None])
  patch = 0.35 + 0.65 * np.clip(0.5 + 0.35 * _smooth_noise(rng, n, g.s, 20), 0, 1)
  return _blobs(bx, by, sig, sig * rng.uniform(0.8, 1.3, (n, k)), amp, g.xs, g.ys) * patch


def _viral_pneumonia(rng, c: _Chest, g: _Grid) -> np.ndarray:
  """Perihilar reticular pattern in both lungs or (30%) a lobar consolidation of one lung."""
  n, s, xx, yy = c.n, g.s, g.xx, g.yy
  lcx_r, lcx_l, lw0, lh0, lcy0 = c.lung_geometry()
  lobar = rng.random(n) < 0.3
  # Perihilar interstitial: reticular lines (|band-pass noise| small) around both hila.
  hx = np.stack([lcx_r + 0.45 * lw0, lcx_l - 0.45 * lw0], 1)
  hy = np.stack([lcy0 - 0.05 * lh0] * 2, 1) + rng.uniform(-0.05, 0.1, (n, 2))
  sig = rng.uniform(0.16, 0.24, (n, 2))
  env = _blobs(hx, hy, sig, sig * 1.3, rng.uniform(0.17, 0.25, (n, 2)), g.xs, g.ys)
  band = _smooth_noise(rng, n, s, 24) - 0.7 * _smooth_noise(rng, n, s, 10)
  reticular = 0.3 + 0.7 * np.exp(-((band / 0.45) ** 2))
  inter = env * reticular
  # Lobar: one lung, below (lower lobe) or above (upper lobe) a slanted fissure.
  right = rng.random(n) < 0.5
  lcx_one = np.where(right, lcx_r, lcx_l)[:, None, None]
  fissure = c.lcy + c.lh * _u(rng, -0.1, 0.3, n) + _u(rng, -0.3, 0.3, n) * (xx - lcx_one)
  lower = (rng.random(n) < 0.7)[:, None, None]
  beyond = np.where(lower, yy - fissure, fissure - yy)
  in_side = _sigmoid((np.abs(xx - c.cx) - 0.08) * 40.0)
  in_side = in_side * ((xx - c.cx) * np.where(right, -1.0, 1.0)[:, None, None] > 0)
  lobe = _sigmoid(beyond * 30.0) * in_side
  lobe = lobe * _u(rng, 0.18, 0.26, n) * (0.85 + 0.15 * _smooth_noise(rng, n, s, 16))
  return np.where(lobar[:, None, None], lobe, inter)


def _lung_opacity(rng, c: _Chest, g: _Grid) -> np.ndarray:
  """One or two compact dense focal opacities anywhere in one lung."""
  n = c.n
  lcx_r, lcx_l, lw0, lh0, lcy0 = c.lung_geometry()
  k = 2
  count = rng.integers(1, k + 1, n)
  side = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None] * np.ones((n, k))
  center = np.where(side < 0, lcx_r[:, None], lcx_l[:, None])
  bx = center + lw0[:, None] * rng.uniform(-0.6, 0.6, (n, k))
  by = lcy0[:, None] + lh0[:, None] * rng.uniform(-0.7, 0.7, (n, k))
  sig = rng.uniform(0.04, 0.08, (n, k))
  amp = rng.uniform(0.18, 0.28, (n, k)) * (np.arange(k)[None, :] < count[:, None])
  return _blobs(bx, by, sig, sig, amp, g.xs, g.ys)


# Class name -> its finding (the lesion intensity, (n, S, S), before masking to the lung field).
_FINDINGS = {'COVID': _covid, 'Viral Pneumonia': _viral_pneumonia, 'Lung_Opacity': _lung_opacity}


def _finding(name: str, rng, c: _Chest, g: _Grid) -> np.ndarray:
  """The class's lesion inside the lung field only (zeros for Normal)."""
  if name == 'Normal':
    lesion = np.zeros((c.n, g.s, g.s), np.float32)
  elif name in _FINDINGS:
    lesion = _FINDINGS[name](rng, c, g)
  else:
    raise ValueError(
      f'phantom: no finding defined for class {name!r}; known: COVID, Normal, '
      'Viral Pneumonia, Lung_Opacity.'
    )
  return lesion.astype(np.float32) * c.field


def _acquisition(rng, img: np.ndarray, g: _Grid) -> np.ndarray:
  """Exposure gradient, gamma, gain/offset, noise and burned-in marker; uint8 (n, S, S)."""
  n, s, xx, yy = img.shape[0], g.s, g.xx, g.yy
  img = img + _u(rng, -0.04, 0.04, n) * xx + _u(rng, -0.04, 0.04, n) * yy
  img = np.clip(img, 0.0, 1.0) ** _u(rng, 0.8, 1.25, n)
  img = img * _u(rng, 0.85, 1.15, n) + _u(rng, -0.04, 0.04, n)
  img = img + _u(rng, 0.008, 0.025, n) * rng.standard_normal((n, s, s), dtype=np.float32)
  has_marker = rng.random(n) < 0.4
  m = max(3, s // 20)
  for i in np.flatnonzero(has_marker):
    y0 = int(rng.integers(2, s // 6))
    x0 = (
      int(rng.integers(2, s // 6)) if rng.random() < 0.5 else int(s - m - rng.integers(2, s // 6))
    )
    img[i, y0 : y0 + m, x0 : x0 + m] = 0.95
    img[i, y0 + 1 : y0 + m - 1, x0 + m // 3 : x0 + m] = 0.2  # an 'L'-like glyph
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render(
  label: int,
  n: int,
  *,
  image_size: int,
  rng: np.random.Generator,
  class_names: Sequence[str] = CLASS_NAMES_3,
) -> dict[str, np.ndarray]:
  """Draws `n` phantoms of one class: anatomy, then the class's finding, then acquisition.

  The draws from `rng` happen in that order, so the images depend only on (label, n, size, rng).

  Args:
    label: class index into `class_names`.
    n: number of images.
    image_size: side S in pixels.
    rng: numpy Generator (all randomness comes from it).
    class_names: class names; the name selects the finding.

  Returns:
    {'image': uint8 (n, S, S), 'lesion_mask': bool (n, S, S), 'lung_mask': bool (n, S, S)}.
  """
  grid = _Grid.make(image_size)
  chest = _anatomy(rng, n, grid)
  lesion = _finding(class_names[label], rng, chest, grid)
  peak = lesion.max(axis=(1, 2), keepdims=True)
  lesion_mask = (lesion > 0.3 * peak) & (peak > 1e-3) & chest.lung_mask
  image = _acquisition(rng, chest.img + lesion, grid)
  return {'image': image, 'lesion_mask': lesion_mask, 'lung_mask': chest.lung_mask}


def generate(
  num_per_class: int, *, image_size: int, seed: int, class_names: Sequence[str] = CLASS_NAMES_3
):
  """Yields (class_name, index_from_1, image uint8 (S,S), lesion_mask bool (S,S)) deterministically.

  Chunk c of class k is drawn from `np.random.default_rng([seed, k, c])`, so the result does not
  depend on how many images are consumed at once.
  """
  for label, name in enumerate(class_names):
    for c, start in enumerate(range(0, num_per_class, _CHUNK)):
      n = min(_CHUNK, num_per_class - start)
      out = render(
        label,
        n,
        image_size=image_size,
        rng=np.random.default_rng([seed, label, c]),
        class_names=class_names,
      )
      for j in range(n):
        yield name, start + j + 1, out['image'][j], out['lesion_mask'][j]


def phantom_params(
  num_per_class: int, image_size: int, seed: int, class_names: Sequence[str]
) -> dict:
  """The parameters that define a phantom folder (written to PHANTOM.json and compared on reuse)."""
  return {
    'version': PHANTOM_VERSION,
    'num_per_class': int(num_per_class),
    'image_size': int(image_size),
    'seed': int(seed),
    'class_names': list(class_names),
  }


def write_folder(
  out_dir: str | os.PathLike,
  *,
  num_per_class: int,
  image_size: int,
  seed: int,
  class_names: Sequence[str] = CLASS_NAMES_3,
) -> Path:
  """Writes a Kaggle-layout phantom folder (+ lesion masks and PHANTOM.json) and returns its path.

  The folder is written under a temporary name and renamed into place, so a crashed or concurrent
  writer never leaves a half-written folder at `out_dir`. An existing complete folder with the same
  parameters is reused.
  """
  out = Path(out_dir)
  params = phantom_params(num_per_class, image_size, seed, class_names)
  if (out / MARKER_FILE).exists():
    if json.loads((out / MARKER_FILE).read_text()) == params:
      return out
    raise ValueError(
      f'{out} holds a phantom folder with other parameters '
      f'({(out / MARKER_FILE).read_text()!s}); delete it or use another directory.'
    )
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f'.{out.name}.tmp-{os.getpid()}'
  for name in class_names:
    (tmp / name / 'images').mkdir(parents=True, exist_ok=True)
    (tmp / name / 'lesion_masks').mkdir(parents=True, exist_ok=True)
  for name, i, image, mask in generate(
    num_per_class, image_size=image_size, seed=seed, class_names=class_names
  ):
    Image.fromarray(image).save(tmp / name / 'images' / f'{name}-{i}.png', compress_level=1)
    Image.fromarray(mask.astype(np.uint8) * 255).save(
      tmp / name / 'lesion_masks' / f'{name}-{i}.png', compress_level=1
    )
  (tmp / MARKER_FILE).write_text(json.dumps(params, indent=1))
  try:
    os.rename(tmp, out)
  except OSError:  # another process finished first
    import shutil  # pylint: disable=g-import-not-at-top

    shutil.rmtree(tmp, ignore_errors=True)
    if not (out / MARKER_FILE).exists():
      raise
  return out


def mask_path(phantom_dir: str | os.PathLike, filename: str) -> Path:
  """Path of the lesion mask for a record filename such as 'COVID/images/COVID-3.png'."""
  parts = Path(filename).parts
  if len(parts) != 3 or parts[1] != 'images':
    raise ValueError(
      f"not a phantom record filename: {filename!r} (expected '<Class>/images/<Class>-<i>.png')"
    )
  return Path(phantom_dir) / parts[0] / 'lesion_masks' / parts[2]


def load_lesion_mask(phantom_dir: str | os.PathLike, filename: str, size: int = 0) -> np.ndarray:
  """Lesion mask bool (H, W) for a record filename; `size` > 0 resizes it (nearest) to (size, size).

  Normal images have an all-False mask.
  """
  path = mask_path(phantom_dir, filename)
  if not path.exists():
    raise FileNotFoundError(
      f'no lesion mask for {filename!r} at {path}; is {phantom_dir} the '
      'phantom folder of this dataset (DatasetHandle.phantom_dir)?'
    )
  im = Image.open(path)
  if size and im.size != (size, size):
    im = im.resize((size, size), Image.NEAREST)
  return np.asarray(im) > 127
