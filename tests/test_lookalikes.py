"""jaxcxr.data.lookalikes: perceptual hashes, near-duplicate groups, groups over kept items.

The test pictures are smooth random fields (`film`); their planted copies (`noised`, `resampled`,
`jpeg`, `shifted`) are reused by tests/data/test_builder.py.
"""

import io

import numpy as np
import pytest
from PIL import Image

from jaxcxr.data import images, lookalikes


def film(rng: np.random.Generator, size: int = 128) -> np.ndarray:
  """A smooth random picture (bicubic 6x6 random field), uint8 (size, size): film-like
  gradients, and distinct draws are >= 60 of 256 bits apart."""
  low = rng.uniform(0, 255, (6, 6)).astype(np.float32)
  big = np.asarray(Image.fromarray(low, mode='F').resize((size, size), Image.BICUBIC))
  return np.clip(np.round(big), 0, 255).astype(np.uint8)


def noised(image: np.ndarray, seed: int, sigma: float = 2.0) -> np.ndarray:
  """A re-scanned copy: Gaussian noise of `sigma` grey levels."""
  noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
  return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


def resampled(image: np.ndarray, side: int) -> np.ndarray:
  """A re-upload at another resolution."""
  return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=quality)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('L'))


def shifted(image: np.ndarray, pixels: int = 1) -> np.ndarray:
  """A copy moved `pixels` right (the edge column repeated)."""
  return np.concatenate([np.repeat(image[:, :1], pixels, 1), image[:, :-pixels]], axis=1)


def _d(a: np.ndarray, b: np.ndarray) -> int:
  return lookalikes.hamming(lookalikes.perceptual_hash(a), lookalikes.perceptual_hash(b))


def test_copies_within_the_threshold_distinct_films_far_apart():
  rng = np.random.default_rng(0)
  films = [film(rng) for _ in range(24)]
  h = np.stack([lookalikes.perceptual_hash(f) for f in films])
  assert h.shape == (24, lookalikes.HASH_BITS // 64) and h.dtype == np.uint64
  for i, f in enumerate(films):
    for copy in (
      noised(f, i),
      resampled(f, 170),
      jpeg(f),
      np.clip(f.astype(np.int16) + 1, 0, 255).astype(np.uint8),
    ):
      assert _d(f, copy) <= lookalikes.DEFAULT_THRESHOLD
  d = [lookalikes.hamming(h[i], h[j]) for i in range(24) for j in range(i + 1, 24)]
  assert min(d) > 4 * lookalikes.DEFAULT_THRESHOLD


def test_shifts_are_caught_only_when_small():
  # The documented limit: dHash follows brightness, noise and resampling, not moves. A one-pixel
  # shift of a 224 px picture stays within the threshold (2-7 bits here); 4 px leave it (8-24).
  rng = np.random.default_rng(1)
  films = [film(rng, 224) for _ in range(20)]
  one = [_d(f, shifted(f, 1)) for f in films]
  four = [_d(f, shifted(f, 4)) for f in films]
  assert max(one) <= lookalikes.DEFAULT_THRESHOLD
  assert np.median(four) > lookalikes.DEFAULT_THRESHOLD


def hand_made_hashes() -> np.ndarray:
  """Four 256-bit hashes: 0, 1 (3 bits from 0), 2 (10 from 0, 7 from 1), 3 (all bits set)."""
  h = np.zeros((4, 4), np.uint64)
  h[1, 0] = 0b111  # 3 bits from image 0
  h[2, 0] = 0b1111111111  # 10 bits from 0, 7 from 1: linked to the group through image 1
  h[3] = np.uint64(2**64 - 1)  # 256 bits from all
  return h


def test_near_duplicates_on_hand_made_hashes():
  h = hand_made_hashes()
  groups, nearest, partner = lookalikes.near_duplicates(h, ['a', 'b', 'c', 'd'], 8, block=2)
  assert groups == [[0, 1, 2]]
  assert nearest.tolist() == [3, 3, 7, 246]
  assert partner.tolist() == [1, 0, 1, 2]
  groups, _, _ = lookalikes.near_duplicates(h, ['a', 'b', '', 'a'], 2)
  assert groups == [[0, 3]]  # equal content hashes link; unusable ('') images are left out
  # A negative threshold links equal content only.
  groups, _, _ = lookalikes.near_duplicates(np.zeros((3, 4), np.uint64), ['a', 'b', 'a'], -1)
  assert groups == [[0, 2]]


def test_groups_of_planted_copies():
  rng = np.random.default_rng(3)
  films = [film(rng) for _ in range(10)]
  films += [noised(films[2], 7), resampled(films[5], 100), films[5].copy()]  # 10, 11, 12
  content = [images.content_hash(f) for f in films]
  h = np.stack([lookalikes.perceptual_hash(f) for f in films])
  groups, _, _ = lookalikes.near_duplicates(h, content, lookalikes.DEFAULT_THRESHOLD)
  assert groups == [[2, 10], [5, 11, 12]]


@pytest.mark.parametrize(
  ('keep', 'expected'),
  [
    ([1, 1, 1, 1, 1, 1], [[0, 2], [3, 4, 5]]),
    ([1, 1, 0, 1, 1, 1], [[2, 3, 4]]),  # [0, 2] loses a member: no group; the other re-indexed
    ([1, 1, 1, 0, 0, 1], [[0, 2]]),  # [3, 4, 5] keeps one member: no group
    ([0, 1, 1, 0, 1, 1], [[2, 3]]),  # [0, 2] -> one member; [3, 4, 5] -> [2, 3]
  ],
)
def test_restrict(keep, expected):
  groups = [[0, 2], [3, 4, 5]]
  assert lookalikes.restrict(groups, np.asarray(keep, bool)) == expected
