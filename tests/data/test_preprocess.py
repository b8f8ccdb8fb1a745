"""Shared preprocessing: device normalisation, its numpy twin, inference image loading."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.data import images, preprocess
from tests.data import helpers

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def test_to_model_input_matches_torchvision_formula():
  x = np.array([0, 51, 128, 255], np.uint8).reshape(1, 2, 2, 1)
  want = (x.astype(np.float64) / 255.0 - MEAN) / STD  # (1, 2, 2, 3) by broadcasting
  got = np.asarray(preprocess.to_model_input(x))
  assert got.shape == (1, 2, 2, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got[0, 0, 0], [-2.117904, -2.035714, -1.804444], atol=1e-6)
  np.testing.assert_allclose(got[0, 1, 1], [2.248908, 2.428571, 2.64], atol=1e-6)
  np.testing.assert_allclose(preprocess.to_model_input_np(x), got, atol=1e-6)


def test_dtype_and_three_channel_input():
  rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
  out = preprocess.to_model_input(rgb, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 3, 3)
  np.testing.assert_allclose(
    np.asarray(out, np.float32), preprocess.to_model_input_np(rgb), atol=0.02
  )
  with pytest.raises(ValueError, match='expected 1 or 3 channels'):
    preprocess.to_model_input(np.zeros((1, 2, 2, 2), np.uint8))


def test_load_image_for_inference(tmp_path):
  rgba = np.zeros((50, 40, 4), np.uint8)
  rgba[..., :3], rgba[..., 3] = 90, 255
  p = helpers.save_png(tmp_path / 'a.png', rgba)
  out = preprocess.load_image_for_inference(p, 32)
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8 and np.all(out == 90)
  g = helpers.random_image(np.random.default_rng(1), 64)
  p16 = helpers.save_png(tmp_path / 'b.png', g.astype(np.uint16) * 257)
  np.testing.assert_array_equal(
    preprocess.load_image_for_inference(p16, 32)[..., 0], images.resize_grey(g, 32)
  )
  # With a stored size, the same two resamples as a prepared dataset.
  np.testing.assert_array_equal(
    preprocess.load_image_for_inference(p16, 16, stored_size=48),
    images.resize_grey(images.resize_grey(g, 48), 16)[..., None],
  )


@pytest.mark.parametrize(
  ('content', 'reason'), [(b'', 'empty (0 bytes)'), (b'GIF? no, text', 'not an image')]
)
def test_inference_errors_name_the_file(tmp_path, content, reason):
  p = tmp_path / 'scan.png'
  p.write_bytes(content)
  with pytest.raises(images.ImageError) as e:
    preprocess.load_image_for_inference(p, 32)
  assert str(p) in str(e.value) and reason in str(e.value)
  assert 'Check that it is a readable PNG/JPEG' in str(e.value)
