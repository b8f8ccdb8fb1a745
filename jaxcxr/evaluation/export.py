"""Leaderboard export: label strings, ONNX model (jax2onnx) and a standalone preprocessor.

The AI Model Share COVID-19 competition scores a list of label strings ('COVID', 'NORMAL',
'PNEUMONIA'), one per input file in input order, and runs a submitted ONNX model after a submitted
Python preprocessor. What we export:

- `model.onnx`: input 'input' float32, the *preprocessed* image batch, layout NHWC
  (N, S, S, 3) by default (the competition's Keras starter models are NHWC; `layout='NCHW'` gives
  (N, 3, S, S) for PyTorch-style pipelines; jax2onnx inserts the transpose); output
  'probabilities' float32 (N, C) softmax in `class_names` order. The batch dimension is dynamic.
  One view per image: a run's test-time augmentation (`config.eval.tta`, which `launch.predict`
  and `launch.evaluate` apply) is not part of the ONNX graph.
- `preprocessing.json`: the preprocessing as data (grey conversion, resizes, grey->3 channels,
  mean/std, layout, dtype, class order and leaderboard labels).
- `preprocessor.py`: a self-contained numpy + Pillow `preprocessor(data)` (file path, bytes or
  uint8 array -> (1, S, S, 3) float32), the same numbers as `jaxcxr.data.preprocess` gives the model
  in training and evaluation.

ONNX export needs the optional requirements-export.txt (jax2onnx, onnx, onnxruntime).
"""

import contextlib
import inspect
import json
import os
import pprint
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import dataset, preprocess
from jaxcxr.models import layers
from jaxcxr.training import checkpoint

# Our class names -> the competition's label strings.
LEADERBOARD_LABELS = {'COVID': 'COVID', 'Normal': 'NORMAL', 'Viral Pneumonia': 'PNEUMONIA'}
LAYOUTS = ('NHWC', 'NCHW')
INPUT_NAME = 'input'
OUTPUT_NAME = 'probabilities'
SPEC_FORMAT = 'jaxcxr-preprocessing/1'
_INSTALL = 'pip install -r requirements-export.txt && pip install --no-deps jax2onnx==0.17.1'


def to_leaderboard_labels(
  pred_indices: Sequence[int],
  class_names: Sequence[str],
  mapping: Mapping[str, str] = LEADERBOARD_LABELS,
) -> list[str]:
  """Predicted class indices -> leaderboard label strings, in the same (input file) order.

  Raises:
    ValueError: a class of the model has no leaderboard label (e.g. a 4-class model's
      'Lung_Opacity'), or an index is out of range.
  """
  class_names = list(class_names)
  missing = [c for c in class_names if c not in mapping]
  if missing:
    raise ValueError(
      f'Classes {missing} of this model have no leaderboard label; the mapping covers '
      f'{sorted(mapping)}. The leaderboard scores {sorted(set(mapping.values()))} only: use a '
      '3-class model (config.data.builder_config="3class") or pass a mapping for every class.'
    )
  labels = [mapping[c] for c in class_names]
  out = []
  for i in np.asarray(pred_indices, np.int64).reshape(-1):
    if not 0 <= i < len(class_names):
      raise ValueError(
        f'Predicted index {int(i)} is outside [0, {len(class_names)}) for classes {class_names}.'
      )
    out.append(labels[i])
  return out


def preprocessing_spec(
  image_size: int,
  *,
  stored_size: int = 0,
  layout: str = 'NHWC',
  class_names: Sequence[str] = (),
  mapping: Mapping[str, str] = LEADERBOARD_LABELS,
) -> dict:
  """The model-input preprocessing as a JSON-able dict (see `write_preprocessing_spec`)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r}; choose one of {LAYOUTS}.')
  s = int(image_size)
  spec = {
    'format': SPEC_FORMAT,
    'input': 'image file (PNG/JPEG/BMP/TIFF) path or bytes, or a uint8 grey (H, W) array',
    'grey': (
      'EXIF orientation applied; 8-bit grey: L as is, RGB/palette via ITU-R 601-2 luma '
      '(Pillow convert("L")), alpha composited onto black, 16/32-bit and float images '
      'min-max stretched to 0..255'
    ),
    'resize': {
      'stored_size': int(stored_size) if stored_size and stored_size != s else 0,
      'image_size': s,
      'method': 'Pillow bilinear with antialiasing (torchvision Resize on PIL images)',
      'keep_aspect_ratio': False,
      'note': 'stored_size > 0: resized to stored_size first, then to image_size, as '
      'the training data was',
    },
    'channels': 'grey repeated to 3 channels (R = G = B)',
    'scale': 1.0 / 255.0,
    'mean': list(preprocess.IMAGENET_MEAN),
    'std': list(preprocess.IMAGENET_STD),
    'formula': 'x = (pixel / 255 - mean[c]) / std[c]',
    'layout': layout,
    'dtype': 'float32',
    'input_shape': [-1, s, s, 3] if layout == 'NHWC' else [-1, 3, s, s],
    'input_name': INPUT_NAME,
    'output_name': OUTPUT_NAME,
    'output': 'softmax probabilities (N, num_classes), columns in class_names order',
  }
  if class_names:
    spec['class_names'] = list(class_names)
    spec['leaderboard_labels'] = [mapping.get(c) for c in class_names]
  return spec


def write_preprocessing_spec(path: str, image_size: int, **kwargs) -> dict:
  """Writes `preprocessing_spec(image_size, **kwargs)` to `path` (JSON) and returns it."""
  spec = preprocessing_spec(image_size, **kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(spec, f, indent=2)
  return spec


def preprocess_for_leaderboard(data, spec: dict):
  """Image -> model input (1, S, S, 3) float32 (or (1, 3, S, S) for layout NCHW), per `spec`.

  Self-contained (numpy + Pillow only): `write_preprocessor_py` copies this source into a
  standalone preprocessor.py.
  """
  import io  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  import numpy as np  # pylint: disable=g-import-not-at-top,import-outside-toplevel,reimported
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  if isinstance(data, np.ndarray):
    grey = data[..., 0] if data.ndim == 3 else data
    grey = np.asarray(grey, np.uint8)
  else:
    if isinstance(data, (bytes, bytearray)):
      im = Image.open(io.BytesIO(data))
    else:
      with open(data, 'rb') as f:
        im = Image.open(io.BytesIO(f.read()))
    im = ImageOps.exif_transpose(im)
    im.load()
    mode = im.mode
    if mode == 'P' and 'transparency' in im.info:
      im, mode = im.convert('RGBA'), 'RGBA'
    if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
      black = Image.new('RGBA', im.size, (0, 0, 0, 255))
      grey = np.asarray(Image.alpha_composite(black, im.convert('RGBA')).convert('L'))
    elif mode == 'L':
      grey = np.asarray(im)
    elif mode.startswith('I') or mode == 'F':
      a = np.asarray(im).astype(np.float64)
      a = a.mean(axis=-1) if a.ndim == 3 else a
      lo, hi = float(a.min()), float(a.max())
      grey = (
        np.zeros(a.shape, np.uint8)
        if hi <= lo
        else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
      )
    else:
      grey = np.asarray(im.convert('L'))
  for side in (spec['resize']['stored_size'], spec['resize']['image_size']):
    if side and grey.shape != (side, side):
      grey = np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR))
  x = grey.astype(np.float32)[..., None]
  std = np.asarray(spec['std'], np.float32)
  scale = 1.0 / (255.0 * std)
  bias = -np.asarray(spec['mean'], np.float32) / std
  x = (np.broadcast_to(x, x.shape[:-1] + (3,)) * scale + bias).astype(np.float32)
  if spec['layout'] == 'NCHW':
    x = x.transpose(2, 0, 1)
  return x[None]


def write_preprocessor_py(path: str, spec: dict) -> str:
  """Writes a standalone preprocessor.py defining `preprocessor(data)` with `spec` baked in."""
  source = inspect.getsource(preprocess_for_leaderboard)
  text = (
    '"""Leaderboard preprocessor generated by jaxcxr.evaluation.export'
    ' (needs numpy and Pillow only).\n\n'
    '`preprocessor(data)`: image file path, bytes or uint8 grey array -> model input\n'
    f'{tuple(spec["input_shape"])} float32 ({spec["layout"]}), for model.onnx.\n"""\n\n'
    'import numpy as np\n\n'
    f'SPEC = {pprint.pformat(spec, indent=1, width=100, sort_dicts=False)}\n\n\n'
    f'{source}\n\n'
    'def preprocessor(data):\n'
    '  """Image -> (1, ...) float32 model input (see SPEC)."""\n'
    '  return preprocess_for_leaderboard(data, SPEC)\n'
  )
  with open(path, 'w') as f:
    f.write(text)
  return path


def _import_export_deps():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import onnx  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import onnxruntime  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f'ONNX export needs the optional export requirements ({e}). Install them with: {_INSTALL}'
    ) from e
  return jax2onnx, onnx, onnxruntime


def onnx_session(path: str):
  """onnxruntime CPU session of an exported model (warnings silenced)."""
  _, _, ort = _import_export_deps()
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _spatial_pads(x, padding) -> tuple:
  """Explicit ((lo, hi), ...) spatial padding -> jnp.pad widths for NHWC (or (), if none)."""
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if all(p == (0, 0) for p in pads):
    return ()
  return ((0, 0),) * (x.ndim - len(pads) - 1) + pads + ((0, 0),)


@contextlib.contextmanager
def _onnx_friendly_pooling():
  """Adapts our `nn.max_pool` / `nn.avg_pool` calls to jax2onnx's Linen pooling shims.

  Entered *inside* the traced function, so it wraps whatever `flax.linen.max_pool` is at trace
  time: jax2onnx 0.17.1's shim (which takes the window by keyword only and lowers only
  padding='VALID'/'SAME') during conversion, flax's own function otherwise. Our layers call
  `nn.max_pool(x, window, strides=..., padding=((p, p), (p, p)))` (torch's explicit padding, e.g.
  the ResNet/DenseNet stem); explicit padding becomes a -inf `jnp.pad` (ONNX Pad) followed by a
  VALID pool, which is exactly what flax computes (it pads max pools with -inf).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  traced_max, traced_avg = nn.max_pool, nn.avg_pool

  def max_pool(x, window_shape, strides=None, padding='VALID'):
    if not isinstance(padding, str):
      pads = _spatial_pads(x, padding)
      if pads:
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
      padding = 'VALID'
    return traced_max(x, window_shape=tuple(window_shape), strides=strides, padding=padding)

  def avg_pool(x, window_shape, strides=None, padding='VALID', count_include_pad=True):
    if not isinstance(padding, str):
      if _spatial_pads(x, padding):
        raise NotImplementedError('ONNX export of an explicitly padded avg_pool is not supported.')
      padding = 'VALID'
    return traced_avg(
      x,
      window_shape=tuple(window_shape),
      strides=strides,
      padding=padding,
      count_include_pad=count_include_pad,
    )

  nn.max_pool, nn.avg_pool = max_pool, avg_pool
  try:
    yield
  finally:
    nn.max_pool, nn.avg_pool = traced_max, traced_avg


# jax2onnx 0.17.1 graph optimisations that produce wrong graphs for our models: with
# 'remove_redundant_transpose_pairs', ResNet's identity-shortcut Add receives one NCHW and one NHWC
# operand (onnxruntime refuses to load the model: "Add: Incompatible dimensions").
_SKIP_OPTIMIZER_PASSES = ('remove_redundant_transpose_pairs',)


@contextlib.contextmanager
def _without_optimizer_passes(names: Sequence[str]):
  """Temporarily drops jax2onnx graph-optimisation passes by name (no-op if the layout differs)."""
  try:
    from jax2onnx.converter import ir_optimizations  # pylint: disable=g-import-not-at-top

    passes = ir_optimizations._OPTIMIZER_PASSES  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    yield
    return
  ir_optimizations._OPTIMIZER_PASSES = tuple(  # pylint: disable=protected-access
    p for p in passes if getattr(p, 'name', None) not in names
  )
  try:
    yield
  finally:
    ir_optimizations._OPTIMIZER_PASSES = passes  # pylint: disable=protected-access


def export_onnx(
  module,
  variables: dict,
  image_size: int,
  path: str,
  *,
  layout: str = 'NHWC',
  check_batch: int = 2,
  atol: float = 1e-4,
  seed: int = 0,
) -> dict:
  """Exports preprocessed images -> probabilities to ONNX and checks it against JAX.

  Args:
    module: the Flax module.
    variables: {'params', 'batch_stats' (if any)}; baked into the graph as initializers.
    image_size: input side S.
    path: the .onnx file (one file below 2 GB; larger models get a .data sidecar).
    layout: 'NHWC' (input (N, S, S, 3)) or 'NCHW' (input (N, 3, S, S)).
    check_batch: random (normal) inputs for the onnxruntime parity check; 0 skips it.
    atol: largest allowed |onnxruntime - JAX| probability difference.
    seed: of the check inputs.

  Returns:
    {'path', 'layout', 'input_name', 'output_name', 'max_abs_diff' (None when unchecked)}.

  Raises:
    ImportError: the export requirements are missing (with the install command).
    RuntimeError: onnxruntime and JAX differ by more than `atol`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r}; choose one of {LAYOUTS}.')
  jax2onnx, onnx, _ = _import_export_deps()
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)

  def probabilities(x):
    with _onnx_friendly_pooling(), layers.xla_convs_only():
      logits = module.apply(variables, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  s = int(image_size)
  with _without_optimizer_passes(_SKIP_OPTIMIZER_PASSES):
    proto = jax2onnx.to_onnx(
      probabilities,
      [('N', s, s, 3)],
      model_name='jaxcxr',
      inputs_as_nchw=[0] if layout == 'NCHW' else None,
      input_names=[INPUT_NAME],
      output_names=[OUTPUT_NAME],
    )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  large = proto.ByteSize() >= 2**31 - 2**20  # protobuf's 2 GB limit
  onnx.save_model(
    proto,
    path,
    save_as_external_data=large,
    location=os.path.basename(path) + '.data' if large else None,
  )
  result = {
    'path': path,
    'layout': layout,
    'input_name': INPUT_NAME,
    'output_name': OUTPUT_NAME,
    'max_abs_diff': None,
  }
  if check_batch:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(check_batch, s, s, 3)).astype(np.float32)
    # Full float32 matmuls/convs: GPUs default to TF32 (10-bit mantissa), which alone can exceed
    # `atol`; the check must mean the same on every backend.
    with jax.default_matmul_precision('highest'):
      expected = np.asarray(jax.jit(probabilities)(x))
    feed = x.transpose(0, 3, 1, 2) if layout == 'NCHW' else x
    got = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: feed})[0]
    diff = float(np.max(np.abs(got - expected)))
    result['max_abs_diff'] = diff
    if not diff <= atol:
      raise RuntimeError(
        f'ONNX export of {path} differs from JAX by {diff:.3g} > {atol} on '
        'random inputs; the exported graph is wrong. Do not submit it.'
      )
  return result


def export_workdir(
  workdir: str, out: str, *, layout: str = 'NHWC', which: str = 'best', atol: float = 1e-4
) -> dict:
  """Exports a training workdir's checkpoint for the leaderboard (launch.export_onnx).

  Writes `out`/model.onnx, preprocessing.json (stored and input sizes from the run's data config)
  and preprocessor.py.

  Returns:
    `export_onnx`'s dict plus 'preprocessing', 'preprocessor' (paths), 'step' and
    'unmapped_classes' (classes without a leaderboard label).
  """
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  os.makedirs(out, exist_ok=True)
  unmapped = [c for c in bundle.class_names if c not in LEADERBOARD_LABELS]
  result = export_onnx(
    bundle.module,
    bundle.variables,
    bundle.image_size,
    os.path.join(out, 'model.onnx'),
    layout=layout,
    atol=atol,
  )
  spec = write_preprocessing_spec(
    os.path.join(out, 'preprocessing.json'),
    bundle.image_size,
    stored_size=dataset.stored_size(bundle.config.data),
    layout=layout,
    class_names=bundle.class_names,
  )
  result['preprocessing'] = os.path.join(out, 'preprocessing.json')
  result['preprocessor'] = write_preprocessor_py(os.path.join(out, 'preprocessor.py'), spec)
  result['step'] = int(bundle.step)
  result['unmapped_classes'] = unmapped
  return result
