"""Tests for jaxcxr.evaluation.export: leaderboard labels, preprocessing spec/preprocessor, ONNX
parity."""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcxr import models
from jaxcxr.data import preprocess
from jaxcxr.evaluation import export, inference
from tests.test_gradcam import numpy_variables

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
  """JAX references in full float32: on GPU the default (TF32) alone could break the 1e-4/1e-5
  parity checks, which must mean the same on every backend."""
  with jax.default_matmul_precision('highest'):
    yield


def test_leaderboard_labels_in_input_order():
  assert export.to_leaderboard_labels([2, 0, 1, 1, 0], NAMES) == [
    'PNEUMONIA',
    'COVID',
    'NORMAL',
    'NORMAL',
    'COVID',
  ]
  assert export.to_leaderboard_labels(np.array([], np.int64), NAMES) == []
  custom = {'COVID': 'covid', 'Normal': 'normal', 'Viral Pneumonia': 'viral'}
  assert export.to_leaderboard_labels(np.array([[1], [2]]), NAMES, custom) == ['normal', 'viral']


def test_leaderboard_labels_errors():
  with pytest.raises(ValueError, match=r"\['Lung_Opacity'\].*no leaderboard label"):
    export.to_leaderboard_labels([0], NAMES + ('Lung_Opacity',))
  with pytest.raises(ValueError, match='outside'):
    export.to_leaderboard_labels([3], NAMES)


def test_preprocessing_spec(tmp_path):
  spec = export.write_preprocessing_spec(
    str(tmp_path / 'p.json'), 224, stored_size=256, class_names=NAMES
  )
  assert json.loads((tmp_path / 'p.json').read_text()) == spec
  assert spec['input_shape'] == [-1, 224, 224, 3] and spec['layout'] == 'NHWC'
  assert spec['resize']['stored_size'] == 256 and spec['resize']['image_size'] == 224
  assert spec['mean'] == [0.485, 0.456, 0.406] and spec['std'] == [0.229, 0.224, 0.225]
  assert spec['leaderboard_labels'] == ['COVID', 'NORMAL', 'PNEUMONIA']
  nchw = export.preprocessing_spec(64, stored_size=64, layout='NCHW')
  assert nchw['input_shape'] == [-1, 3, 64, 64] and nchw['resize']['stored_size'] == 0
  with pytest.raises(ValueError, match='layout'):
    export.preprocessing_spec(64, layout='CHW')


def _image_files(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (50, 70), dtype=np.uint8)
  rgb = rng.integers(0, 256, (45, 40, 3), dtype=np.uint8)
  rgba = np.concatenate([rgb, rng.integers(0, 256, (45, 40, 1), dtype=np.uint8)], axis=-1)
  files = {
    'grey.png': Image.fromarray(grey),
    'rgb.jpg': Image.fromarray(rgb),
    'rgba.png': Image.fromarray(rgba),
    'deep.png': Image.fromarray((grey.astype(np.int32) * 200 + 7).astype(np.uint16)),
  }
  paths = []
  for name, im in files.items():
    im.save(tmp_path / name)
    paths.append(str(tmp_path / name))
  return paths


@pytest.mark.parametrize('stored_size', [0, 48])
def test_standalone_preprocessor_matches_pipeline(tmp_path, stored_size):
  size = 32
  spec = export.preprocessing_spec(size, stored_size=stored_size)
  script = export.write_preprocessor_py(str(tmp_path / 'preprocessor.py'), spec)
  text = Path(script).read_text()
  assert 'import jaxcxr' not in text and 'from jaxcxr' not in text
  loader = importlib.util.spec_from_file_location('generated_preprocessor', script)
  generated = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(generated)
  for path in _image_files(tmp_path):
    expected = preprocess.to_model_input_np(
      preprocess.load_image_for_inference(path, size, stored_size=stored_size)
    )[None]
    got = generated.preprocessor(path)
    assert got.dtype == np.float32 and got.shape == (1, size, size, 3), path
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=path)
    with open(path, 'rb') as f:
      np.testing.assert_array_equal(generated.preprocessor(f.read()), got)
  nchw = export.preprocess_for_leaderboard(
    np.full((size, size), 255, np.uint8), export.preprocessing_spec(size, layout='NCHW')
  )
  assert nchw.shape == (1, 3, size, size)
  np.testing.assert_allclose(
    nchw[0, :, 0, 0],
    (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    rtol=1e-6,
  )


def test_export_needs_optional_deps(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)
  module = models.build('cnn_small', 3, widths=(4,))
  with pytest.raises(ImportError, match='--no-deps jax2onnx'):
    export.export_onnx(module, {}, 16, str(tmp_path / 'm.onnx'))


@pytest.fixture(scope='module')
def small_model():
  pytest.importorskip('jax2onnx')
  module = models.build('cnn_bn', 3, widths=(8, 16))
  return module, numpy_variables(module, (1, 32, 32, 3), seed=1)


@pytest.mark.parametrize('layout', ['NHWC', 'NCHW'])
def test_onnx_parity_and_leaderboard_path(small_model, tmp_path, layout):
  module, variables = small_model
  out = export.export_onnx(
    module, variables, 32, str(tmp_path / 'model.onnx'), layout=layout, check_batch=3
  )
  assert out['max_abs_diff'] < 1e-5
  session = export.onnx_session(out['path'])
  assert [i.name for i in session.get_inputs()] == ['input']
  assert session.get_inputs()[0].shape == (
    ['N', 32, 32, 3] if layout == 'NHWC' else ['N', 3, 32, 32]
  )
  # Leaderboard path (standalone preprocessor + ONNX) == our inference path, on real files.
  spec = export.preprocessing_spec(32, layout=layout)
  predict = inference.make_predict_fn(module, variables)
  paths = _image_files(tmp_path)
  x = np.concatenate([export.preprocess_for_leaderboard(p, spec) for p in paths])
  onnx_probs = session.run(['probabilities'], {'input': x})[0]
  jax_probs, ok, failed = inference.predict_files(predict, paths, 32, batch_size=4)
  assert ok == paths and not failed
  np.testing.assert_allclose(onnx_probs, jax_probs, atol=1e-5)
  assert onnx_probs.max() < 0.999  # not saturated, so the comparison means something


def test_onnx_parity_failure_raises(small_model, tmp_path, monkeypatch):
  module, variables = small_model

  class Wrong:
    def __init__(self, path):
      del path

    def run(self, names, feed):
      del names
      return [np.full((feed['input'].shape[0], 3), 1 / 3, np.float32)]

  monkeypatch.setattr(export, 'onnx_session', Wrong)
  with pytest.raises(RuntimeError, match='differs from JAX'):
    export.export_onnx(module, variables, 32, str(tmp_path / 'model.onnx'))


def test_onnx_check_computes_its_jax_reference_at_highest_precision(small_model, tmp_path):
  """Outside any precision context (the fixture's is undone here), as a library caller would be."""
  module, variables = small_model
  seen = []

  class Recorder:  # the module, recording the matmul precision each time it is traced
    def apply(self, *args, **kwargs):
      seen.append(jax.config.jax_default_matmul_precision)
      return module.apply(*args, **kwargs)

  with jax.default_matmul_precision(None):
    export.export_onnx(Recorder(), variables, 32, str(tmp_path / 'model.onnx'), check_batch=2)
  assert seen[-1] == 'highest', seen  # the last trace is the jitted JAX reference


@pytest.mark.slow
def test_onnx_parity_resnet18(tmp_path):
  # Torch-style explicitly padded max-pool and identity shortcuts: the two jax2onnx workarounds.
  pytest.importorskip('jax2onnx')
  module = models.build('resnet18', 3)
  variables = numpy_variables(module, (1, 32, 32, 3), seed=2)
  fc = variables['params']['fc']
  variables['params']['fc'] = {**fc, 'kernel': fc['kernel'] * 0.1}  # soft probabilities
  out = export.export_onnx(module, variables, 32, str(tmp_path / 'r18.onnx'), check_batch=4)
  assert out['max_abs_diff'] < 1e-4
  x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
  probs = export.onnx_session(out['path']).run(['probabilities'], {'input': x})[0]
  expected = np.asarray(jax.nn.softmax(jax.jit(module.apply)(variables, x)))
  assert expected.max() < 0.999
  np.testing.assert_allclose(probs, expected, atol=1e-4)
