"""Shortcut indicator (jaxcxr.evaluation.shortcut): lung mask, frame, shares, flags."""

import numpy as np
import pytest

from jaxcxr.data import phantom
from jaxcxr.evaluation import shortcut

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


@pytest.mark.parametrize('size', [64, 128])
def test_lung_mask_matches_phantom_geometry(size):
  ious = []
  for label in range(3):
    out = phantom.render(label, 8, image_size=size, rng=np.random.default_rng([7, label]))
    for image, truth in zip(out['image'], out['lung_mask'], strict=True):
      mask = shortcut.lung_mask(image)
      assert mask.shape == (size, size) and mask.dtype == bool
      ious.append((mask & truth).sum() / (mask | truth).sum())
  assert np.mean(ious) > 0.7 and np.min(ious) > 0.5, (np.mean(ious), np.min(ious))


def test_lung_mask_falls_back_to_the_envelope_without_lungs():
  flat = np.full((96, 96), 128, np.uint8)  # no dark lung fields at all
  mask, env = shortcut.lung_mask(flat), shortcut.lung_envelope(96)
  assert (mask & env).sum() / (mask | env).sum() > 0.95  # (computed at 64 px, resized)


def test_border_frame_and_shares_hand_computed():
  frame = shortcut.border_frame(10, 10, 0.1)
  assert frame.sum() == 100 - 64 and frame[0].all() and not frame[1:9, 1:9].any()
  cams = np.zeros((3, 10, 10))
  cams[0, 0, 0] = 1.0  # all mass in the corner
  cams[1, 4:6, 4:6] = 1.0  # all mass in the middle
  cams[2] = 1.0  # uniform
  lungs = np.zeros((3, 10, 10), bool)
  lungs[:, 2:8, 2:8] = True
  s = shortcut.cam_shares(cams, lungs, 0.1)
  np.testing.assert_allclose(s['border'], [1.0, 0.0, 0.36])
  np.testing.assert_allclose(s['corners'], [1.0, 0.0, 0.36])  # 4 squares of 3 x 3 pixels
  assert shortcut.corner_squares(10, 10).sum() == 36
  np.testing.assert_allclose(s['outside_lung'], [1.0, 0.0, 0.64])
  assert s['peak_outside_lung'].tolist() == [True, False, True]  # a flat map peaks at (0, 0)
  np.testing.assert_allclose(s['border_area'], 0.36)
  np.testing.assert_allclose(s['outside_lung_area'], 0.64)
  assert np.isnan(shortcut.cam_shares(np.zeros((1, 10, 10)), lungs[:1])['border'][0])


def test_indicator_flags_a_corner_shortcut_only():
  rng = np.random.default_rng(0)
  n, size = 30, 32
  lungs = np.zeros((n, size, size), bool)
  lungs[:, 6:26, 4:14] = lungs[:, 6:26, 18:28] = True
  yy, xx = np.mgrid[0:size, 0:size]
  cams = np.zeros((n, size, size))
  preds = np.repeat([0, 1, 2], 10)
  for i in range(n):
    if preds[i] == 0:  # COVID: a blob on the top-left corner (a burned-in marker)
      cy, cx = rng.uniform(1, 3, 2)
    else:  # the others: a blob inside a lung
      cy, cx = rng.uniform(10, 22), rng.choice([8.0, 23.0])
    cams[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
  ind = shortcut.indicator(shortcut.cam_shares(cams, lungs), preds, NAMES)
  assert ind['flagged'] == ['COVID']
  assert '% of the Grad-CAM mass in the corners' in ind['per_class']['COVID']['reason']
  assert not ind['per_class']['Normal']['reason'] and ind['per_class']['COVID']['corners'] > 0.9
  assert ind['per_class']['Normal']['n'] == 10
  md = shortcut.markdown(ind, [('predicted COVID, wrong #1', 'shortcut/COVID_wrong_1.png')])
  assert (
    '**Flagged: COVID.**' in md and '![predicted COVID, wrong #1](shortcut/COVID_wrong_1.png)' in md
  )
  # A class never predicted has no numbers and is not flagged.
  ind = shortcut.indicator(shortcut.cam_shares(cams[10:], lungs[10:]), preds[10:], NAMES)
  assert ind['per_class']['COVID']['n'] == 0 and ind['flagged'] == []


def test_indicator_flags_evidence_off_the_lungs_outside_the_corners():
  n, size = 20, 32
  lungs = np.zeros((n, size, size), bool)
  lungs[:, 6:26, 4:14] = lungs[:, 6:26, 18:28] = True
  yy, xx = np.mgrid[0:size, 0:size]
  preds = np.repeat([1, 2], 10)
  cams = np.zeros((n, size, size))
  for i in range(n):
    # Normal: a blob below the lungs, bottom centre (no corner); VP: inside a lung, except for
    # two images of ten (peak outside on 20%: under the 90% rule).
    cy, cx = (30.0, 16.0) if preds[i] == 1 or i in (10, 11) else (15.0, 8.0)
    cams[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))
  ind = shortcut.indicator(shortcut.cam_shares(cams, lungs), preds, NAMES)
  normal = ind['per_class']['Normal']
  assert normal['corners'] < ind['corner_flag'] * normal['corners_area']  # not the corner rule
  assert normal['peak_outside_lung'] == 1.0 and ind['flagged'] == ['Normal']
  assert normal['reason'].startswith('peak outside the lungs on 100% of the images')
  assert ind['per_class']['Viral Pneumonia']['peak_outside_lung'] == pytest.approx(0.2)
  # Peaks outside on >= 90% but less mass outside than a uniform map: not flagged.
  spread = cams + 0.2 * lungs
  for i in range(n):
    spread[i] /= spread[i].max()
    spread[i][30, 16] = 2.0  # the peak stays off the lungs
  ind = shortcut.indicator(shortcut.cam_shares(spread, lungs), preds, NAMES)
  assert ind['per_class']['Normal']['peak_outside_lung'] == 1.0
  assert (
    ind['per_class']['Normal']['outside_lung'] < ind['per_class']['Normal']['outside_lung_area']
  )
  assert ind['flagged'] == []


def test_select_examples_most_confident_first():
  labels = np.array([0, 0, 0, 1, 1, 2])
  probs = np.array(
    [
      [0.9, 0.05, 0.05],
      [0.6, 0.2, 0.2],
      [0.95, 0.03, 0.02],
      [0.7, 0.2, 0.1],
      [0.1, 0.8, 0.1],
      [0.2, 0.1, 0.7],
    ]
  )
  got = shortcut.select_examples(labels, probs.argmax(1), probs, per_class=2)
  assert got == [
    (2, 'correct', 1),
    (0, 'correct', 2),
    (3, 'wrong', 1),
    (4, 'correct', 1),
    (5, 'correct', 1),
  ]
