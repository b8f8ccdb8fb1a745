"""Tests for jaxcxr.data.input_checks: each check's number, where it flags, and that the pixels the
model sees are exactly `images.decode_grey`'s."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxcxr.data import images, input_checks, ood_material, phantom
from tests import ood_material as material

SIZE = 64


@pytest.fixture(scope='module')
def film():
  """A 128 px phantom chest film: an in-distribution stand-in that must pass every check."""
  return phantom.render(0, 1, image_size=128, rng=np.random.default_rng(0))['image'][0]


def _png(pixels, mode=None) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(pixels), mode=mode).save(buf, format='PNG')
  return buf.getvalue()


def _inspect(data: bytes, image_size: int = SIZE, **kw) -> input_checks.Inspection:
  return input_checks.inspect_bytes(data, name='x.png', image_size=image_size, **kw)


def test_measures_against_hand_computed_values():
  rgb = np.array([[[10, 20, 30], [5, 5, 5]], [[0, 255, 0], [7, 7, 9]]], np.uint8)
  # per-pixel (max - min): 20, 0, 255, 2 -> mean 69.25
  assert input_checks.colour_spread(rgb) == pytest.approx(69.25)
  assert input_checks.colour_spread(rgb[..., 0]) == 0.0
  ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
  lo, hi = np.percentile(np.arange(256), [1, 99])
  assert input_checks.grey_spread(ramp) == pytest.approx(hi - lo)
  assert input_checks.grey_spread(np.full((8, 8), 40, np.uint8)) == 0.0


def test_a_film_passes_and_its_pixels_are_decode_greys(film):
  data = _png(film)
  ins = _inspect(data)
  assert ins.passed and ins.reasons == []
  np.testing.assert_array_equal(ins.grey, images.decode_grey(data, name='x.png'))
  assert ins.measures['colour'] == 0.0 and ins.measures['aspect'] == 1.0
  assert ins.measures['spread'] > 100 and ins.measures['short_side'] == 128
  # The same film stored as RGB (R = G = B) and as an RGB JPEG stays grey.
  assert _inspect(_png(np.repeat(film[..., None], 3, -1))).passed
  assert _inspect(material.jpeg_bytes(np.repeat(film[..., None], 3, -1))).passed


def test_blank_rgba_png_from_the_issue_is_near_constant():
  ins = _inspect(_png(material.blank_rgba(64)))
  assert ins.reasons == ['near_constant']
  assert ins.measures['spread'] == 0.0 and ins.measures['colour'] == 0.0  # black after compositing
  for blank in ood_material.generated('blank', 12, 64, seed=1):
    assert 'near_constant' in _inspect(_png(blank)).reasons


@pytest.mark.parametrize(
  ('shape', 'image_size', 'want'),
  [
    ((64, 64), 64, []),
    ((64, 128), 64, []),  # 2.0: the limit itself passes
    ((60, 128), 64, ['aspect_ratio']),  # 2.13
    ((1, 1000), 64, ['aspect_ratio', 'too_small']),
    ((32, 32), 64, []),  # half the input side passes
    ((31, 40), 64, ['too_small']),
    ((200, 200), 448, ['too_small']),
  ],
)
def test_aspect_ratio_and_size(shape, image_size, want):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, shape, dtype=np.uint8)
  assert _inspect(_png(pixels), image_size=image_size).reasons == want


def test_colour_photos_and_tinted_films_are_colour(film):
  for photo in ood_material.generated('photos', 6, 96):
    ins = _inspect(_png(photo))
    assert ins.reasons == ['colour'] and ins.measures['colour'] > 10
    assert _inspect(material.jpeg_bytes(photo)).reasons == ['colour']
  for tinted in ood_material.transformed('tinted', [film] * 8, seed=2):
    ins = _inspect(_png(tinted))
    assert ins.reasons == ['colour'], ins.measures
  # A grey film with a small coloured annotation (an arrow, a ruler) stays below the threshold.
  marked = np.repeat(film[..., None], 3, -1)
  marked[5:15, 5:30] = (255, 0, 0)
  assert _inspect(_png(marked)).passed


def test_modes_without_colour_and_thresholds():
  la = np.zeros((40, 40, 2), np.uint8)
  la[..., 0] = np.arange(40, dtype=np.uint8)[None] * 6
  la[..., 1] = 255
  assert input_checks.file_colour(_png(la, 'LA')) == 0.0
  i16 = np.arange(1600, dtype=np.uint16).reshape(40, 40) * 40
  assert input_checks.file_colour(_png(i16)) == 0.0
  assert input_checks.file_colour(b'not an image') == 0.0  # decode_grey reports it, not this
  ramp = np.tile(np.arange(0, 200, 5, dtype=np.uint8), (40, 1))
  assert _inspect(_png(ramp)).passed
  strict = input_checks.Thresholds(min_spread=250.0, max_aspect=1.0)
  assert _inspect(_png(ramp), thresholds=strict).reasons == ['near_constant']
  assert _inspect(_png(ramp[:, :30]), image_size=32, thresholds=strict).reasons == [
    'near_constant',
    'aspect_ratio',
  ]


def test_unreadable_files_stay_errors(tmp_path):
  with pytest.raises(images.ImageError, match=r'missing\.png'):
    input_checks.inspect_file(tmp_path / 'missing.png', image_size=SIZE)
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 20)
  with pytest.raises(images.ImageError, match=r'bad\.png'):
    input_checks.inspect_file(bad, image_size=SIZE, remedy='Check it.')


def test_generated_material_is_deterministic_and_shaped(film):
  for kind in ('noise', 'gradient', 'text', 'photos_grey', 'mri', 'phantom'):
    a = ood_material.generated(kind, 3, 48, seed=5)
    b = ood_material.generated(kind, 3, 48, seed=5)
    assert len(a) == 3 and all(x.shape == (48, 48) and x.dtype == np.uint8 for x in a), kind
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), kind
    assert all(_inspect(_png(x), image_size=48).passed for x in a), kind  # the score's job
  crops = ood_material.transformed('corner_crop', [film], seed=0)
  assert 0.3 * 128 <= crops[0].shape[0] <= 0.4 * 128
  np.testing.assert_array_equal(ood_material.transformed('inverted', [film])[0], 255 - film)
  assert ood_material.transformed('rot90', [film[:, :100]])[0].shape == (100, 128)
  with pytest.raises(ValueError, match='Unknown OOD set'):
    ood_material.generated('cats', 1, 32)
