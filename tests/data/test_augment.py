"""One-warp augmentation: matrix geometry, intensity LUT, per-record randomness."""

import ml_collections
import numpy as np
import pytest

from jaxcxr.data import augment


def _dot(size, x, y):
  img = np.zeros((size, size), np.uint8)
  img[y, x] = 200
  return img


def _where(img):
  ys, xs = np.nonzero(img == img.max())
  return int(xs[0]), int(ys[0])


def test_identity_and_pure_resize():
  g = np.random.default_rng(0).integers(0, 256, (33, 33), dtype=np.uint8)
  np.testing.assert_array_equal(augment.warp(g, augment.affine_matrix(33, 33), 33), g)
  m = augment.affine_matrix(64, 32)
  np.testing.assert_allclose(m @ [-0.5, -0.5, 1], [-0.5, -0.5])  # corners to corners
  np.testing.assert_allclose(m @ [63.5, 63.5, 1], [31.5, 31.5])
  np.testing.assert_allclose(m @ [31.5, 31.5, 1], [15.5, 15.5])  # centre to centre


@pytest.mark.parametrize(
  ('kw', 'moved_to'),
  [
    (dict(angle_deg=90.0), (16, 11)),  # right of centre -> above it (counter-clockwise)
    (dict(flip=True), (11, 16)),  # mirrored
    (dict(shift=(3.0, -2.0)), (24, 14)),
    (dict(zoom=2.0), (26, 16)),
  ],
)
def test_geometry_of_one_dot(kw, moved_to):
  img = _dot(33, 21, 16)  # centre is (16, 16); the dot is 5 px to its right
  out = augment.warp(img, augment.affine_matrix(33, 33, **kw), 33)
  assert _where(out) == moved_to


def test_intensity_lut_numbers():
  lut = augment.intensity_lut(100.0, 1.1, 0.2)
  # (x - 100) * 1.1 + 100 + 51, rounded, clipped to 0..255.
  assert lut[0] == 41 and lut[50] == 96 and lut[100] == 151 and lut[193] == 253
  assert lut[200] == 255 and lut[255] == 255
  assert augment.intensity_lut(200.0, 0.9, -0.3)[0] == 0  # 20 - 76.5 clipped
  np.testing.assert_array_equal(augment.intensity_lut(50.0, 1.0, 0.0), np.arange(256))


def _params(**kw):
  cfg = ml_collections.ConfigDict(
    dict(
      enabled=True,
      rotation_deg=10.0,
      zoom=(0.9, 1.1),
      translate=0.06,
      brightness=0.1,
      contrast=0.1,
      hflip=False,
    )
  )
  cfg.update(kw)
  return augment.AugmentParams.from_config(cfg)


def test_random_map_deterministic_per_rng_and_neutral_when_zero():
  g = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
  t = augment.TrainAugment(_params(), 32)
  a = t.random_map({'image': g, 'label': 1}, np.random.default_rng(7))
  b = t.random_map({'image': g, 'label': 1}, np.random.default_rng(7))
  c = t.random_map({'image': g, 'label': 1}, np.random.default_rng(8))
  assert a['image'].shape == (32, 32, 1) and a['image'].dtype == np.uint8 and a['label'] == 1
  np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(a['image'], c['image'])
  neutral = augment.TrainAugment(
    _params(rotation_deg=0.0, zoom=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0), 40
  )
  out = neutral.random_map({'image': g, 'label': 0}, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'][..., 0], g)


def test_larger_stored_image_is_shrunk_like_eval_before_the_warp():
  # A dataset stored at 224 px serving a 128 px model: with neutral augmentation the training
  # pixels are exactly the eval resize (antialiased), not an aliased bilinear warp of 224 px.
  from jaxcxr.data import images  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(1)
  stripes = np.where(np.arange(224) % 2 == 0, 255, 0).astype(np.uint8)[None, :].repeat(224, 0)
  neutral = augment.TrainAugment(
    _params(rotation_deg=0.0, zoom=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0), 128
  )
  out = neutral.random_map({'image': stripes, 'label': 0}, rng)['image'][..., 0]
  np.testing.assert_array_equal(out, images.resize_grey(stripes, 128))
  assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 30  # 1-px stripes average out
  # Augmented: the same draw on the 224 px record and on its 128 px resize gives the same pixels.
  t = augment.TrainAugment(_params(), 128)
  a = t.random_map({'image': stripes, 'label': 0}, np.random.default_rng(3))['image']
  b = t.random_map(
    {'image': images.resize_grey(stripes, 128), 'label': 0}, np.random.default_rng(3)
  )['image']
  np.testing.assert_array_equal(a, b)


def test_hflip_only_when_enabled():
  img = _dot(33, 21, 16)
  neutral = dict(rotation_deg=0.0, zoom=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0)
  off = augment.TrainAugment(_params(**neutral), 33)
  on = augment.TrainAugment(_params(hflip=True, **neutral), 33)
  rng = np.random.default_rng(0)
  xs_off = {
    _where(off.random_map({'image': img, 'label': 0}, rng)['image'][..., 0])[0] for _ in range(20)
  }
  xs_on = {
    _where(on.random_map({'image': img, 'label': 0}, rng)['image'][..., 0])[0] for _ in range(20)
  }
  assert xs_off == {21} and xs_on == {11, 21}


def test_config_validation():
  with pytest.raises(ValueError, match=r'augment.zoom=\(1.1, 0.9\)'):
    _params(zoom=(1.1, 0.9))
  with pytest.raises(ValueError, match=r'augment\.contrast=1\.5 must be < 1'):
    _params(contrast=1.5)
