"""torchvision -> Flax weight conversion, weight sources, and loading into a model.

- `load_state_dict(source)`: a `.pth` (tensors only: `torch.load(weights_only=True)`, so pickled
  code is refused), a `.safetensors` (no torch needed) or an http(s) URL (downloaded once into a
  cache directory, sha256 checked).
- `from_torchvision(arch, state_dict)`: an explicit torchvision key -> Flax path map
  (`torchvision_key_map`), one layout function (`to_flax_layout`) and strict checks: every key
  used, every variable filled, every shape right.
- `save_converted` / `load_converted`: an Orbax checkpoint of the converted variables plus
  `meta.json`; `config.model.pretrained` points at such a directory.
- `load_pretrained(init_variables, pretrained)`: copies the backbone into freshly initialised
  variables, keeping the (re-sized) head's fresh init.

torch is imported lazily, only to read `.pth` files.
"""

import functools
import hashlib
import http.client
import json
import os
import pathlib
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr import models
from jaxcxr.models import vgg

PathLike = str | os.PathLike
Variables = dict[str, Any]

CACHE_ENV = 'JAXCXR_WEIGHTS_DIR'
DEFAULT_CACHE_DIR = '~/.cache/jaxcxr/weights'
META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'
COLLECTIONS = ('params', 'batch_stats')

# torchvision IMAGENET1K_V1 weights (and the V2 ResNet recipes). The hex after the dash is the
# sha256 prefix that torchvision (and `load_state_dict`) verifies.
TORCHVISION_URLS = {
  'vgg11': 'https://download.pytorch.org/models/vgg11-8a719046.pth',
  'vgg13': 'https://download.pytorch.org/models/vgg13-19584684.pth',
  'vgg16': 'https://download.pytorch.org/models/vgg16-397923af.pth',
  'vgg19': 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth',
  'vgg11_bn': 'https://download.pytorch.org/models/vgg11_bn-6002323d.pth',
  'vgg13_bn': 'https://download.pytorch.org/models/vgg13_bn-abd245e5.pth',
  'vgg16_bn': 'https://download.pytorch.org/models/vgg16_bn-6c64b313.pth',
  'vgg19_bn': 'https://download.pytorch.org/models/vgg19_bn-c79401a0.pth',
  'resnet18': 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
  'resnet34': 'https://download.pytorch.org/models/resnet34-b627a593.pth',
  'resnet50': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
  'resnet101': 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
  'resnet152': 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
  'densenet121': 'https://download.pytorch.org/models/densenet121-a639ec97.pth',
  'densenet161': 'https://download.pytorch.org/models/densenet161-8d451a50.pth',
  'densenet169': 'https://download.pytorch.org/models/densenet169-b2777c0a.pth',
  'densenet201': 'https://download.pytorch.org/models/densenet201-c1103571.pth',
}
TORCHVISION_V2_URLS = {
  'resnet50': 'https://download.pytorch.org/models/resnet50-11ad3fa6.pth',
  'resnet101': 'https://download.pytorch.org/models/resnet101-cd907fc2.pth',
  'resnet152': 'https://download.pytorch.org/models/resnet152-f82ba261.pth',
}


class WeightsError(ValueError):
  """A weight file or state dict that cannot be used; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# Key map and layouts.


class Target(NamedTuple):
  """Where a torchvision tensor goes: Flax collection, path inside it, and its layout."""

  collection: str
  path: tuple[str, ...]
  layout: str  # 'conv' (OIHW), 'dense' (out, in), 'dense_nchw' (VGG fc1) or 'vector'


# Flax leaf -> torchvision leaf, per collection.
_LEAF_NAMES = {
  ('params', 'kernel'): 'weight',
  ('params', 'scale'): 'weight',
  ('params', 'bias'): 'bias',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
}
# Flax top-level module -> torchvision module, where the names differ beyond '_' -> '.'.
_MODULE_NAMES = {
  'vgg': {'fc1': 'classifier.0', 'fc2': 'classifier.3', vgg.HEAD: 'classifier.6'},
  'resnet': {},
  'densenet': {},
}
_PREFIX = {'vgg': '', 'resnet': '', 'densenet': 'features.'}  # densenet: all but the head


def _torch_module_name(family: str, path: Sequence[str]) -> str:
  """('layer1_0', 'downsample_0') -> 'layer1.0.downsample.0' (+ family renames/prefix)."""
  top = _MODULE_NAMES[family].get(path[0], path[0])
  names = [re.sub(r'^([a-z]+\d*)_(\d+)$', r'\1.\2', p) for p in (top, *path[1:])]
  prefix = '' if path[0] == models.HEAD_PARAMS[family] else _PREFIX[family]
  return prefix + '.'.join(names)


@functools.cache
def _abstract_variables(arch: str, num_classes: int) -> Variables:
  model = models.build(arch, num_classes)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  variables = jax.eval_shape(model.init, rngs, jnp.zeros((1, 224, 224, 3), jnp.float32))
  return {c: variables[c] for c in COLLECTIONS if c in variables}


@functools.cache
def torchvision_key_map(arch: str) -> dict[str, Target]:
  """Explicit map torchvision state-dict key -> `Target` for model `arch` (buffers included).

  E.g. for resnet50: 'layer1.0.downsample.0.weight' -> params/layer1_0/downsample_0/kernel,
  'layer1.0.bn1.running_var' -> batch_stats/layer1_0/bn1/var.
  """
  family = models.family(arch)
  if family not in _MODULE_NAMES:
    raise WeightsError(
      f'{arch!r} has no torchvision counterpart; convertible: {", ".join(TORCHVISION_URLS)}'
    )
  out = {}
  for collection, tree in _abstract_variables(arch, 1000).items():
    for path, leaf in flax.traverse_util.flatten_dict(tree).items():
      key = f'{_torch_module_name(family, path[:-1])}.{_LEAF_NAMES[collection, path[-1]]}'
      if path[-1] != 'kernel':
        layout = 'vector'
      elif len(leaf.shape) == 4:
        layout = 'conv'
      elif family == 'vgg' and path[0] == 'fc1':
        layout = 'dense_nchw'
      else:
        layout = 'dense'
      out[key] = Target(collection, path, layout)
  return out


def to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
  """The one torch -> Flax layout function.

  conv: OIHW -> HWIO. dense: (out, in) -> (in, out). dense_nchw: VGG's first classifier layer,
  whose inputs torch flattens in (C, H, W) order and we in (H, W, C) order, so the input axis is
  permuted before transposing. vector: unchanged.
  """
  array = np.asarray(array, np.float32)
  if layout == 'conv':
    return _out_axis_last(array, (2, 3, 1, 0))
  if layout == 'dense':
    return _out_axis_last(array, (1, 0))
  if layout == 'dense_nchw':
    h, w = vgg.POOL_HW
    out_features, in_features = array.shape
    c = in_features // (h * w)
    hw_c_out = _out_axis_last(array.reshape(out_features, c, h * w), (2, 1, 0))
    return hw_c_out.reshape(in_features, out_features)
  if layout == 'vector':
    return array
  raise ValueError(f'unknown layout {layout!r}')


# Output channels copied per block by `_out_axis_last`.
_TRANSPOSE_BLOCK = 64


def _out_axis_last(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
  """`array.transpose(axes)` as a new C-contiguous array; `axes` moves axis 0 (torch's output
  channels) last.

  Copied 64 output channels at a time: a block's reads and writes stay in the CPU caches, where one
  strided copy of a large matrix misses on almost every element. VGG-19's first classifier layer
  (4096 x 25088, with its (C, H, W) -> (H, W, C) permutation): 2.0 s as one copy, 0.50 s in blocks;
  its 4096 x 4096 layer 143 -> 43 ms (scripts/transpose_ab.py, 2-core Xeon, idle).
  """
  out = np.empty([array.shape[a] for a in axes], array.dtype)
  for start in range(0, array.shape[0], _TRANSPOSE_BLOCK):
    block = slice(start, start + _TRANSPOSE_BLOCK)
    out[..., block] = array[block].transpose(axes)
  return out


def _torch_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
  """Inverse of `to_flax_layout` on shapes (for error messages in torch terms)."""
  if layout == 'conv':
    return (shape[3], shape[2], shape[0], shape[1])
  if layout in ('dense', 'dense_nchw'):
    return (shape[1], shape[0])
  return tuple(shape)


# torchvision DenseNet checkpoints name 'denselayer1.norm.1.weight' what the model calls
# 'denselayer1.norm1.weight' (torchvision `_load_state_dict` rewrites them with this regex).
_OLD_DENSENET_KEY = re.compile(
  r'^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$'
)


def _normalise_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for key, value in state_dict.items():
    m = _OLD_DENSENET_KEY.match(key)
    out[m.group(1) + m.group(2) if m else key] = value
  return out


# A key only that family's torchvision state dicts have.
_FAMILY_MARKERS = {
  'vgg': 'classifier.6.weight',
  'resnet': 'layer1.0.conv1.weight',
  'densenet': 'features.denseblock1.denselayer1.conv1.weight',
}


def _guess_arch(keys: set[str]) -> str | None:
  """The convertible arch whose torchvision key set is exactly `keys`, if any."""
  for arch in TORCHVISION_URLS:
    if _FAMILY_MARKERS[models.family(arch)] in keys and set(torchvision_key_map(arch)) == keys:
      return arch
  return None


def from_torchvision(
  arch: str, state_dict: Mapping[str, Any], num_classes: int | None = None
) -> Variables:
  """Converts a torchvision state dict for model `arch` into Flax variables.

  Args:
    arch: a `jaxcxr.models` name with a torchvision counterpart (vgg*, resnet*, densenet*).
    state_dict: torchvision key -> array (numpy or anything `np.asarray` takes);
      `num_batches_tracked` is ignored, old DenseNet key names are accepted.
    num_classes: head size; None: taken from the state dict's head bias (1000 for ImageNet).

  Returns:
    {'params': ..., 'batch_stats': ...} (no 'batch_stats' for the BatchNorm-free VGGs) of float32
    numpy arrays, laid out for `models.build(arch, num_classes)`.

  Raises:
    WeightsError: missing or unexpected keys (e.g. the state dict of another arch) or a wrong
      shape; the message names the keys and both shapes.
  """
  key_map = torchvision_key_map(arch)
  state = {
    k: v for k, v in _normalise_keys(state_dict).items() if not k.endswith('num_batches_tracked')
  }
  missing = sorted(set(key_map) - set(state))
  unexpected = sorted(set(state) - set(key_map))
  if missing or unexpected:
    guess = _guess_arch(set(state))
    hint = f' It looks like a {guess!r} state dict.' if guess else ''
    raise WeightsError(
      f'State dict does not match {arch!r}: {len(missing)} missing keys '
      f'{_some(missing)}, {len(unexpected)} unexpected keys {_some(unexpected)}.{hint}'
    )

  head = models.HEAD_PARAMS[arch]
  if num_classes is None:
    head_bias = next(k for k, t in key_map.items() if t.path == (head, 'bias'))
    num_classes = int(np.shape(state[head_bias])[0])
  expected = _abstract_variables(arch, num_classes)
  flat = {c: {} for c in expected}
  for key, target in key_map.items():
    want = flax.traverse_util.flatten_dict(expected[target.collection])[target.path].shape
    got = tuple(np.shape(state[key]))
    if got != _torch_shape(want, target.layout):
      raise WeightsError(
        f'Shape mismatch for torchvision key {key!r}: state dict has {got}, {arch} '
        f'(num_classes={num_classes}) expects {_torch_shape(want, target.layout)} '
        f'(Flax {target.collection}/{"/".join(target.path)} {tuple(want)}).'
      )
    flat[target.collection][target.path] = to_flax_layout(state[key], target.layout)
  return {c: flax.traverse_util.unflatten_dict(f) for c, f in flat.items()}


def _some(keys: Sequence[str], n: int = 5) -> str:
  return '[' + ', '.join(repr(k) for k in keys[:n]) + (', ...]' if len(keys) > n else ']')


# ------------------------------------------------------------------------------------------------
# Sources.


def default_cache_dir() -> pathlib.Path:
  """$JAXCXR_WEIGHTS_DIR, else ~/.cache/jaxcxr/weights."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _sha256(path: PathLike) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _check_hash(path: PathLike, digest: str, expected_sha256: str | None, what: str) -> None:
  """Full `expected_sha256`, else the torchvision-style prefix in the file name (name-<hex>.ext)."""
  if expected_sha256:
    if digest != expected_sha256.lower():
      raise WeightsError(f'sha256 of {what} is {digest}, expected {expected_sha256}.')
    return
  m = re.search(r'-([0-9a-f]{6,64})\.', pathlib.Path(path).name)
  if m and not digest.startswith(m.group(1)):
    name = pathlib.Path(path).name
    raise WeightsError(
      f'sha256 of {what} is {digest}, but its file name {name!r} says it starts with {m.group(1)}.'
    )


def fetch(
  url: str, cache_dir: PathLike | None = None, expected_sha256: str | None = None
) -> pathlib.Path:
  """Downloads `url` into the cache (once) and returns the verified local file.

  The download goes to a temporary file that is renamed only after the hash check, so the cache
  never holds a partial file. A cached file is re-hashed on every call (seconds even for VGG).
  """
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  name = pathlib.Path(urllib.parse.urlparse(url).path).name or 'weights.pth'
  dest = cache / name
  if dest.exists():
    _check_hash(
      dest, _sha256(dest), expected_sha256, f'cached {dest} (delete it to download {url} again)'
    )
    return dest
  cache.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache, prefix=f'.{name}.', suffix='.part')
  try:
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, 'wb') as f:
      try:
        with urllib.request.urlopen(url, timeout=60) as response:
          expected_size = response.headers.get('Content-Length')
          for chunk in iter(lambda: response.read(1 << 20), b''):
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
      except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, 'reason', None) or f'{type(e).__name__}: {e}'
        raise WeightsError(
          f'Could not download {url} ({reason}). Without network access, fetch that URL on '
          f'another machine and put the file at {dest} (or pass the local file as the '
          f'source).'
        ) from None
    if expected_size is not None and size != int(expected_size):
      raise WeightsError(f'Download of {url} is truncated: {size} of {expected_size} bytes.')
    _check_hash(dest, h.hexdigest(), expected_sha256, f'{url} (downloaded)')
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def _read_pth(path: pathlib.Path) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=g-import-not-at-top  (only .pth sources need torch)

  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    detail = next((line.strip() for line in str(e).splitlines() if 'Unsupported' in line), '')
    raise WeightsError(
      f'{path} contains pickled objects other than tensors and was refused (read with '
      f'torch.load(weights_only=True), nothing in it was executed). {detail}'
    ) from None
  except Exception as e:  # pylint: disable=broad-except  (zip/stream errors are RuntimeError)
    raise WeightsError(
      f'Could not read {path}: the file is truncated or corrupt '
      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}).'
    ) from None
  for wrapper in ('state_dict', 'model'):  # training checkpoints wrap the state dict
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise WeightsError(f'{path} holds a {type(obj).__name__}, not a state dict.')
  out = {}
  for key, value in obj.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      out[key] = (value.float() if value.is_floating_point() else value).numpy()
    else:
      raise WeightsError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor.')
  return out


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  try:
    return dict(safetensors.numpy.load_file(str(path)))
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError is not exported)
    raise WeightsError(
      f'Could not read {path}: the file is truncated or corrupt ({type(e).__name__}: {e}).'
    ) from None


def resolve_source(
  path_or_url: PathLike,
  *,
  cache_dir: PathLike | None = None,
  expected_sha256: str | None = None,
) -> pathlib.Path:
  """The verified local file for a path, an http(s) URL (see `fetch`) or 'torchvision:<arch>'."""
  source = str(path_or_url)
  if source.startswith('torchvision:'):
    arch = source.split(':', 1)[1]
    if arch not in TORCHVISION_URLS:
      raise WeightsError(f'No torchvision URL for {arch!r}; known: {", ".join(TORCHVISION_URLS)}')
    source = TORCHVISION_URLS[arch]
  if source.startswith(('http://', 'https://')):
    return fetch(source, cache_dir, expected_sha256)
  path = pathlib.Path(source).expanduser()
  if not path.is_file():
    raise WeightsError(f'Weight file {path} does not exist.')
  if expected_sha256:
    _check_hash(path, _sha256(path), expected_sha256, str(path))
  return path


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a local `.pth`/`.pt` (tensors only) or `.safetensors` file into key -> numpy array."""
  path = pathlib.Path(path)
  if path.suffix in ('.pth', '.pt'):
    return _read_pth(path)
  if path.suffix == '.safetensors':
    return _read_safetensors(path)
  raise WeightsError(f'{path}: unknown weight format {path.suffix!r} (.pth, .pt or .safetensors).')


def load_state_dict(
  path_or_url: PathLike,
  *,
  cache_dir: PathLike | None = None,
  expected_sha256: str | None = None,
) -> dict[str, np.ndarray]:
  """Reads a state dict (key -> numpy array) from a `.pth`, `.safetensors` or http(s) URL.

  Args:
    path_or_url: local file or URL (downloaded into `cache_dir`, see `fetch`); the special
      value 'torchvision:<arch>' means `TORCHVISION_URLS[arch]`.
    cache_dir: download cache; default `default_cache_dir()`.
    expected_sha256: full hex digest to verify (URLs: else the name's torchvision prefix).

  Raises:
    WeightsError: unreadable, truncated, hash mismatch, pickled code, or download failure.
  """
  return read_state_dict(
    resolve_source(path_or_url, cache_dir=cache_dir, expected_sha256=expected_sha256)
  )


# ------------------------------------------------------------------------------------------------
# Converted weights on disk, and loading into a model.


def _num_classes(arch: str, variables: Variables) -> int:
  return int(variables['params'][models.HEAD_PARAMS[arch]]['bias'].shape[0])


def save_converted(
  out_dir: PathLike, arch: str, variables: Variables, meta: Mapping[str, Any] | None = None
) -> pathlib.Path:
  """Writes `variables` (Orbax, `out_dir/variables`) and `out_dir/meta.json`.

  Args:
    out_dir: directory (created; a previous conversion there is overwritten).
    arch: model name.
    variables: {'params', 'batch_stats'} as returned by `from_torchvision`.
    meta: extra provenance, e.g. {'source': url, 'sha256': digest}.

  Returns:
    The absolute `out_dir`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir).expanduser().absolute()
  out.mkdir(parents=True, exist_ok=True)
  variables = {c: jax.tree.map(np.asarray, variables[c]) for c in COLLECTIONS if c in variables}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / VARIABLES_DIR, variables, force=True)
    ckptr.wait_until_finished()

  def count(tree):
    return int(sum(np.size(a) for a in jax.tree.leaves(tree)))

  info = {
    'arch': arch,
    'num_classes': _num_classes(arch, variables),
    'num_params': count(variables['params']),
    'num_batch_stats': count(variables.get('batch_stats', {})),
    **(meta or {}),
  }
  (out / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
  return out


def read_meta(directory: PathLike) -> dict[str, Any]:
  """`meta.json` of a converted-weights directory."""
  path = pathlib.Path(directory).expanduser() / META_FILE
  if not path.is_file():
    raise WeightsError(
      f'{directory} is not a converted-weights directory (no {META_FILE}); '
      'create one with `python -m launch.convert`.'
    )
  return json.loads(path.read_text())


def load_converted(directory: PathLike) -> tuple[str, Variables]:
  """Reads a `save_converted` directory: (arch, {'params', 'batch_stats'} of numpy arrays)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  meta = read_meta(directory)
  arch, num_classes = meta['arch'], int(meta['num_classes'])
  target = jax.tree.map(
    lambda a: np.empty(a.shape, a.dtype), _abstract_variables(arch, num_classes)
  )
  path = pathlib.Path(directory).expanduser().absolute() / VARIABLES_DIR
  with ocp.StandardCheckpointer() as ckptr:
    try:
      variables = ckptr.restore(path, target)
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(
        f'Could not restore {path} as {arch} (num_classes={num_classes}): {e}'
      ) from None
  return arch, jax.tree.map(np.asarray, dict(variables))


def _path_str(collection: str, path: Sequence[str]) -> str:
  return '/'.join((collection, *path))


def load_pretrained(
  init_variables: Mapping[str, Any],
  pretrained_variables: Mapping[str, Any],
  *,
  skip: Sequence[str] = tuple(sorted(set(models.HEAD_PARAMS.values()))),
) -> Variables:
  """Copies pretrained params and BatchNorm statistics into freshly initialised variables.

  Args:
    init_variables: `model.init(...)` output (any other collections pass through unchanged).
    pretrained_variables: {'params', 'batch_stats'}, e.g. from `load_converted`.
    skip: top-level names that keep their fresh init (default: every family's head name).

  Returns:
    `init_variables` with every non-skipped 'params'/'batch_stats' leaf taken from
    `pretrained_variables` (cast to the init dtype).

  Raises:
    WeightsError: a leaf missing on either side or with another shape (names path and shapes).
  """
  out = dict(init_variables)
  problems = []
  for collection in COLLECTIONS:
    init = flax.traverse_util.flatten_dict(dict(init_variables.get(collection, {})))
    pre = flax.traverse_util.flatten_dict(dict(pretrained_variables.get(collection, {})))
    merged = {}
    for path, value in init.items():
      if path[0] in skip:
        merged[path] = value
      elif path not in pre:
        problems.append(
          f'{_path_str(collection, path)}: missing from the pretrained variables '
          f'(model has shape {tuple(np.shape(value))})'
        )
      elif np.shape(pre[path]) != np.shape(value):
        problems.append(
          f'{_path_str(collection, path)}: pretrained shape '
          f'{tuple(np.shape(pre[path]))} != model shape {tuple(np.shape(value))}'
        )
      else:
        merged[path] = jnp.asarray(pre[path], dtype=jnp.asarray(value).dtype)
    for path in sorted(set(pre) - set(init)):
      if path[0] not in skip:
        problems.append(
          f'{_path_str(collection, path)}: in the pretrained variables (shape '
          f'{tuple(np.shape(pre[path]))}) but not in the model'
        )
    if collection in init_variables:
      out[collection] = flax.traverse_util.unflatten_dict(merged)
  if problems:
    raise WeightsError(
      f'Pretrained variables do not fit the model ({len(problems)} problems): '
      + '; '.join(problems[:10])
      + ('; ...' if len(problems) > 10 else '')
    )
  return out


def convert(
  arch: str,
  source: PathLike,
  out_dir: PathLike,
  *,
  cache_dir: PathLike | None = None,
  expected_sha256: str | None = None,
) -> dict[str, Any]:
  """Source (file/URL) -> `from_torchvision` -> `save_converted`; returns the written meta."""
  models.build(arch, 1)  # unknown arch: ValueError listing the names, before any download
  path = resolve_source(source, cache_dir=cache_dir, expected_sha256=expected_sha256)
  variables = from_torchvision(arch, read_state_dict(path))
  source = str(source)
  if source.startswith('torchvision:'):
    source = TORCHVISION_URLS[source.split(':', 1)[1]]
  out = save_converted(out_dir, arch, variables, {'source': source, 'sha256': _sha256(path)})
  return {**read_meta(out), 'out': str(out)}
