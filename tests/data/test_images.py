"""Decoding/validation of odd and bad image files (jaxcxr.data.images)."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from jaxcxr.data import images
from tests.data import helpers


def _err(data: bytes, **kw) -> str:
  with pytest.raises(images.ImageError) as e:
    images.decode_grey(data, name='COVID/x.png', remedy='DO THIS.', **kw)
  return str(e.value)


def test_zero_byte_file():
  msg = _err(b'')
  assert "'COVID/x.png'" in msg and 'empty (0 bytes)' in msg and msg.endswith('DO THIS.')


def test_truncated_png():
  data = helpers.png_bytes(helpers.random_image(np.random.default_rng(0), 64))
  msg = _err(data[: len(data) // 2])
  assert "'COVID/x.png'" in msg and 'truncated' in msg


def test_text_file_named_png():
  msg = _err(b'this is not an image\n')
  assert 'not an image' in msg and 'text bytes' in msg and "b'this is '" in msg


def test_decompression_bomb_refused_without_decoding():
  data = helpers.png_bomb_header(20000, 20000)
  t = time.perf_counter()
  msg = _err(data)
  assert time.perf_counter() - t < 1.0  # never decoded (400 MB would take seconds)
  assert '400000000 pixels' in msg and 'limit is 64.0 MP' in msg
  assert 'max_image_pixels' in msg and 'not decoded' in msg
  # Below Pillow's own guard, ours refuses from the header alone.
  msg = _err(helpers.png_bomb_header(9000, 9000))
  assert '9000x9000 = 81.0 megapixels, above the limit of 64.0 MP' in msg and 'not decoded' in msg


def test_max_pixels_applies_to_valid_images():
  data = helpers.png_bytes(np.zeros((20, 20), np.uint8))
  assert 'above the limit of 0.0 MP' in _err(data, max_pixels=399)
  assert images.decode_grey(data, name='x', max_pixels=400).shape == (20, 20)


def test_rgba_composited_on_black():
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., :3] = [200, 100, 50]
  rgba[..., 3] = 255
  rgba[0, 0, 3] = 0  # fully transparent -> black
  rgba[1, 1, 3] = 128  # half -> about half the luma
  out = images.decode_grey(helpers.png_bytes(rgba), name='x')
  luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)  # 119
  assert out.shape == (4, 5) and out.dtype == np.uint8
  assert out[2, 2] == luma and out[0, 0] == 0
  assert abs(int(out[1, 1]) - luma * 128 / 255) <= 1


def test_rgb_equal_channels_is_exact():
  g = helpers.random_image(np.random.default_rng(1), 16)
  out = images.decode_grey(helpers.png_bytes(np.stack([g] * 3, -1)), name='x')
  np.testing.assert_array_equal(out, g)


@pytest.mark.parametrize(('scale', 'hi'), [(257, 255), (16, 4095)])
def test_16bit_stretched_min_max(scale, hi):
  g = np.arange(256, dtype=np.uint16).reshape(16, 16)
  data = helpers.png_bytes((g.astype(np.uint32) * scale).astype(np.uint16))
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode.startswith('I')
  out = images.decode_grey(data, name='x')
  assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
  if hi == 255:  # x * 257 spans 0..65535: the stretch gives back x exactly
    np.testing.assert_array_equal(out, g.astype(np.uint8))
  assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic


def test_palette_image():
  g = helpers.random_image(np.random.default_rng(2), 8)
  p = Image.fromarray(np.stack([g] * 3, -1)).convert('P', palette=Image.ADAPTIVE, colors=256)
  buf = io.BytesIO()
  p.save(buf, 'PNG')
  out = images.decode_grey(buf.getvalue(), name='x')
  np.testing.assert_array_equal(out, np.asarray(p.convert('L')))


def test_load_missing_file(tmp_path):
  with pytest.raises(images.ImageError, match='cannot be read'):
    images.load_grey(tmp_path / 'nope.png')


def test_resize_is_torchvision_bilinear():
  g = helpers.random_image(np.random.default_rng(3), 40)
  out = images.resize_grey(g, 20)
  np.testing.assert_array_equal(
    out, np.asarray(Image.fromarray(g).resize((20, 20), Image.BILINEAR))
  )
  assert images.resize_grey(g, 40) is g


def test_content_hash_ignores_file_format():
  g = helpers.random_image(np.random.default_rng(4), 16)
  a = images.decode_grey(helpers.png_bytes(g), name='a')
  b = images.decode_grey(helpers.png_bytes(np.stack([g] * 3, -1)), name='b')
  assert images.content_hash(a) == images.content_hash(b)
  assert images.content_hash(a) != images.content_hash(a.T.copy())
