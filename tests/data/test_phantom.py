"""Synthetic phantoms: determinism, masks, no brightness shortcut, folder layout."""

import numpy as np
import pytest

from jaxcxr import CLASS_NAMES_3, CLASS_NAMES_4
from jaxcxr.data import phantom


def _render(label, n=32, seed=0, size=64, names=CLASS_NAMES_3):
  return phantom.render(
    label, n, image_size=size, rng=np.random.default_rng(seed), class_names=names
  )


def test_deterministic_from_seed():
  a, b, c = _render(0, seed=5), _render(0, seed=5), _render(0, seed=6)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['lesion_mask'], b['lesion_mask'])
  assert not np.array_equal(a['image'], c['image'])
  g1 = [x[2] for x in phantom.generate(70, image_size=32, seed=1)]
  g2 = [x[2] for x in phantom.generate(70, image_size=32, seed=1)]
  assert len(g1) == 210 and all(np.array_equal(x, y) for x, y in zip(g1, g2, strict=True))


@pytest.mark.parametrize(('label', 'name'), list(enumerate(CLASS_NAMES_4)))
def test_masks_inside_lungs_and_empty_for_normal(label, name):
  out = _render(label, names=CLASS_NAMES_4)
  m, lung = out['lesion_mask'], out['lung_mask']
  assert out['image'].dtype == np.uint8 and out['image'].shape == (32, 64, 64)
  area = m.reshape(32, -1).mean(1)
  if name == 'Normal':
    assert m.sum() == 0
  else:
    assert np.all(area > 0.002), area.min()  # every image has a finding
    assert not np.any(m & ~lung)  # inside the lung fields
  # Lungs occupy a plausible part of the film.
  assert 0.12 < lung.mean() < 0.4


def test_covid_bilateral_lower_peripheral_vp_central():
  cov = _render(0, n=64)['lesion_mask']
  vp_int = _render(2, n=64, seed=1)['lesion_mask']
  s = cov.shape[-1]
  left, right = cov[:, :, : s // 2].any((1, 2)), cov[:, :, s // 2 :].any((1, 2))
  assert left.mean() > 0.9 and right.mean() > 0.9  # bilateral
  ys, xs = np.nonzero(cov.sum(0))
  w = cov.sum(0)[ys, xs]
  cy = np.average(ys, weights=w) / s
  assert cy > 0.5  # lower zones

  # COVID sits further from the midline than the (mostly perihilar) VP pattern.
  def lateral(m):
    ys, xs = np.nonzero(m.sum(0))
    return np.average(np.abs(xs / s - 0.5), weights=m.sum(0)[ys, xs])

  assert lateral(cov) > lateral(vp_int) + 0.02


def test_no_global_brightness_shortcut():
  means = [
    _render(c, n=256, seed=10 + c, size=48)['image'].reshape(256, -1).mean(1) for c in range(3)
  ]
  pooled_sd = np.mean([m.std() for m in means])
  for a in range(3):
    for b in range(a + 1, 3):
      assert abs(means[a].mean() - means[b].mean()) < 0.25 * pooled_sd


def test_write_folder_and_load_mask(tmp_path):
  out = phantom.write_folder(tmp_path / 'ph', num_per_class=3, image_size=32, seed=0)
  for name in CLASS_NAMES_3:
    assert sorted(p.name for p in (out / name / 'images').iterdir()) == [
      f'{name}-{i}.png' for i in (1, 2, 3)
    ]
    assert len(list((out / name / 'lesion_masks').iterdir())) == 3
  m = phantom.load_lesion_mask(out, 'COVID/images/COVID-2.png')
  ref = next(x[3] for x in phantom.generate(3, image_size=32, seed=0) if x[:2] == ('COVID', 2))
  np.testing.assert_array_equal(m, ref)
  assert m.any() and not phantom.load_lesion_mask(out, 'Normal/images/Normal-1.png').any()
  assert phantom.load_lesion_mask(out, 'COVID/images/COVID-2.png', size=64).shape == (64, 64)
  # Reuse with the same parameters; refuse other parameters in the same folder.
  assert phantom.write_folder(out, num_per_class=3, image_size=32, seed=0) == out
  with pytest.raises(ValueError, match='other parameters'):
    phantom.write_folder(out, num_per_class=3, image_size=32, seed=1)
  with pytest.raises(ValueError, match='not a phantom record filename'):
    phantom.load_lesion_mask(out, 'COVID-2.png')
