"""Perturbations of jaxcxr.evaluation.robustness against hand-computed values."""

import numpy as np
import pytest

from jaxcxr.evaluation import robustness

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


def test_masks_hand_counted():
  frame = robustness.frame_mask(20)  # 2 px a side
  assert frame.sum() == 400 - 16 * 16 and frame[0].all() and not frame[2:18, 2:18].any()
  corners = robustness.corner_mask(50)  # round(50 * 0.18) = 9 px squares
  assert corners.sum() == 4 * 81 and corners[:9, :9].all() and not corners[9:41].any()


def test_zoom_scales_about_the_centre():
  img = np.zeros((1, 41, 41, 1), np.uint8)
  img[0, 15:26, 15:26] = 200  # 11 x 11 square around the centre pixel (20, 20)
  np.testing.assert_array_equal(robustness.zoom(img, 1.0), img)
  big = robustness.zoom(img, 2.0)[0, ..., 0]
  rows = np.flatnonzero(big[:, 20] > 100)
  assert rows.min() in (10, 11) and rows.max() in (29, 30)  # 2 x 11 = 22 px, centred
  small = robustness.zoom(img, 0.5)[0, ..., 0]
  assert (small > 100).sum() in range(25, 50) and small[0, 0] == 0  # ~5.5 x 5.5, black fill
  assert robustness.zoom(img[..., 0], 1.0).shape == (1, 41, 41)  # (N, S, S) too


def test_partners_are_of_another_class_and_seeded():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  mates = robustness.partners(labels, seed=3)
  assert (labels[mates] != labels).all()
  np.testing.assert_array_equal(mates, robustness.partners(labels, seed=3))
  np.testing.assert_array_equal(robustness.partners(np.zeros(3, int)), [0, 1, 2])  # one class


def test_swap_region_and_perturb():
  images = np.stack([np.full((20, 20, 1), v, np.uint8) for v in (10, 20, 30)])
  mates = np.array([1, 2, 0])
  out = robustness.perturb(images, 'border_swapped', mates)
  assert out[0, 0, 0, 0] == 20 and out[0, 10, 10, 0] == 10 and out[2, 19, 5, 0] == 10
  out = robustness.perturb(images, 'text_swapped', mates)  # 4 px squares at 20 px
  assert out[1, 0, 19, 0] == 30 and out[1, 4, 0, 0] == 20 and out[1, 10, 0, 0] == 20
  assert robustness.zoom_factors((0.9, 1.1)) == {
    'zoom_in': 1.1,
    'zoom_out': 0.9,
    'zoom_in_beyond': 1.25,
    'zoom_out_beyond': 0.8,
  }
  with pytest.raises(ValueError, match='Unknown perturbation'):
    robustness.perturb(images, 'blur', mates)


def test_summarise_hand_computed():
  labels = np.array([0, 0, 1, 1, 2, 2])
  eye = np.eye(3)
  clean = eye[labels]  # all right: macro-F1 1
  flipped = eye[[0, 1, 1, 1, 2, 2]]  # one COVID film called Normal
  s = robustness.summarise(labels, clean, {'text_swapped': flipped, 'zoom_in': clean}, NAMES)
  assert s['clean'] == {'macro_f1': 1.0, 'accuracy': 1.0} and s['images'] == 6
  row = s['perturbations']['text_swapped']
  # F1: COVID 2/3, Normal 0.8, VP 1 -> macro 0.8222
  assert row['macro_f1'] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
  assert row['changed'] == pytest.approx(1 / 6) and row['accuracy'] == pytest.approx(5 / 6)
  assert row['f1_drop'] == pytest.approx(1 - row['macro_f1'])
  assert s['perturbations']['zoom_in']['changed'] == 0.0
  assert s['perturbations']['zoom_in']['description'] == 'zoom 1.1x (training augmentation range)'
  table = robustness.comparison_table({'jaxcxr': s, 'torchvision': s})
  assert '| clean | 1.000 | - | 1.000 | - |' in table
  assert '| 0.822 | 16.7% | 0.822 | 16.7% |' in table


def test_evaluate_runs_the_predictor_on_each_perturbation():
  calls = []

  def predict(x):
    calls.append(x.copy())
    return np.eye(3)[(x[:, 0, 0, 0] > 0).astype(int)]  # reads the top-left pixel only

  images = np.zeros((4, 20, 20, 1), np.uint8)
  images[:2, :3, :3] = 255  # class 1 films carry a corner mark
  labels = np.array([1, 1, 0, 0])
  s = robustness.evaluate(predict, images, labels, NAMES[:2])
  assert len(calls) == 1 + len(robustness.PERTURBATIONS)
  assert s['clean']['accuracy'] == 1.0
  assert s['perturbations']['text_swapped']['accuracy'] == 0.0  # the marks moved films
  assert s['perturbations']['text_swapped']['changed'] == 1.0
  assert s['perturbations']['zoom_in']['changed'] == 0.0
