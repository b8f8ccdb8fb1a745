"""Tests for jaxcxr.evaluation.inference: jitted prediction, padded batches, unreadable files."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxcxr import models
from jaxcxr.data import preprocess
from jaxcxr.evaluation import inference
from tests.test_gradcam import numpy_variables

SIZE = 32


@pytest.fixture(scope='module')
def model():
  module = models.build('cnn_small', 3, widths=(8, 16))
  return module, numpy_variables(module, (1, SIZE, SIZE, 3), seed=3)


def _write_images(folder, n, seed=0):
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    path = os.path.join(folder, f'img{i}.png')
    Image.fromarray(rng.integers(0, 256, (40 + i, 48), dtype=np.uint8)).save(path)
    paths.append(path)
  return paths


def test_predict_fn_matches_model(model):
  module, variables = model
  images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
  fn = inference.make_predict_fn(module, {**variables, 'intermediates': {}})
  probs = np.asarray(fn(images))
  assert probs.dtype == np.float32 and probs.shape == (3, 3)
  logits = module.apply(variables, preprocess.to_model_input_np(images))
  expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_predict_files_pads_reports_failures_and_compiles_once(model, tmp_path):
  module, variables = model
  good = _write_images(str(tmp_path), 5)
  corrupt = str(tmp_path / 'corrupt.png')
  with open(corrupt, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
  text = str(tmp_path / 'notes.png')
  with open(text, 'w') as f:
    f.write('not an image')
  missing = str(tmp_path / 'missing.png')
  paths = [good[0], corrupt, good[1], good[2], missing, good[3], text, good[4]]

  fn = inference.make_predict_fn(module, variables)
  probs, ok, failed = inference.predict_files(fn, paths, SIZE, batch_size=2)
  assert ok == good
  assert [p for p, _ in failed] == [corrupt, missing, text]
  assert all(reason for _, reason in failed)
  assert probs.shape == (5, 3)
  assert fn.func._cache_size() == 1  # 5 images in batches of 2: padded, one compilation
  # Same numbers as predicting each image on its own.
  singles = np.concatenate(
    [np.asarray(fn(preprocess.load_image_for_inference(p, SIZE)[None])) for p in good]
  )
  np.testing.assert_allclose(probs, singles, rtol=1e-5, atol=1e-6)


def test_predict_files_all_failed(model, tmp_path):
  fn = inference.make_predict_fn(*model)
  probs, ok, failed = inference.predict_files(fn, [str(tmp_path / 'nope.png')], SIZE, 4)
  assert ok == [] and len(failed) == 1 and probs.shape[0] == 0
  with pytest.raises(ValueError, match='batch_size'):
    inference.predict_files(fn, [], SIZE, 0)


def test_predict_arrays_padding_invariant(model):
  fn = inference.make_predict_fn(*model)
  images = np.random.default_rng(1).integers(0, 256, (7, SIZE, SIZE, 1), dtype=np.uint8)
  a = inference.predict_arrays(fn, images, 3)
  b = inference.predict_arrays(fn, images, 7)
  assert a.shape == (7, 3)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_list_images(tmp_path):
  (tmp_path / 'sub').mkdir()
  for name in ('b.png', 'a.JPG', 'sub/c.png', 'readme.txt'):
    (tmp_path / name).write_bytes(b'')
  assert inference.list_images(str(tmp_path)) == [
    str(tmp_path / 'a.JPG'),
    str(tmp_path / 'b.png'),
    str(tmp_path / 'sub' / 'c.png'),
  ]
  assert inference.list_images(str(tmp_path / '*.png')) == [str(tmp_path / 'b.png')]
  assert inference.list_images(str(tmp_path / 'b.png')) == [str(tmp_path / 'b.png')]
  assert inference.list_images(str(tmp_path / 'none*.png')) == []
