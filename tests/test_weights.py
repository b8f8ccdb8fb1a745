"""jaxcxr.models.weights: key map, layouts, strict conversion, sources (.pth, .safetensors, URL),
Orbax round trip and load_pretrained. torch/torchvision are test-only here."""

import functools
import hashlib
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torchvision

from jaxcxr import models
from jaxcxr.models import weights

REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def _torch_state_dict(name: str, **kwargs) -> dict[str, np.ndarray]:
  torch.manual_seed(0)
  return {k: v.numpy() for k, v in getattr(torchvision.models, name)(**kwargs).state_dict().items()}


@pytest.fixture(scope='module')
def resnet18_sd():
  return _torch_state_dict('resnet18')


@pytest.fixture(scope='module')
def resnet18_variables(resnet18_sd):
  return weights.from_torchvision('resnet18', resnet18_sd)


# ---------------------------------------------------------------------------------- key map


@pytest.mark.parametrize(
  ('arch', 'key', 'collection', 'path', 'layout'),
  [
    ('resnet50', 'conv1.weight', 'params', ('conv1', 'kernel'), 'conv'),
    (
      'resnet50',
      'layer1.0.downsample.0.weight',
      'params',
      ('layer1_0', 'downsample_0', 'kernel'),
      'conv',
    ),
    (
      'resnet50',
      'layer1.0.downsample.1.weight',
      'params',
      ('layer1_0', 'downsample_1', 'scale'),
      'vector',
    ),
    ('resnet50', 'layer4.2.bn3.running_var', 'batch_stats', ('layer4_2', 'bn3', 'var'), 'vector'),
    ('resnet50', 'fc.weight', 'params', ('fc', 'kernel'), 'dense'),
    ('vgg16', 'features.28.bias', 'params', ('features_28', 'bias'), 'vector'),
    ('vgg16', 'classifier.0.weight', 'params', ('fc1', 'kernel'), 'dense_nchw'),
    ('vgg16', 'classifier.3.weight', 'params', ('fc2', 'kernel'), 'dense'),
    ('vgg16', 'classifier.6.bias', 'params', ('classifier', 'bias'), 'vector'),
    ('vgg16_bn', 'features.1.running_mean', 'batch_stats', ('features_1', 'mean'), 'vector'),
    ('densenet121', 'features.conv0.weight', 'params', ('conv0', 'kernel'), 'conv'),
    (
      'densenet121',
      'features.denseblock2.denselayer12.conv2.weight',
      'params',
      ('denseblock2', 'denselayer12', 'conv2', 'kernel'),
      'conv',
    ),
    (
      'densenet121',
      'features.transition3.norm.weight',
      'params',
      ('transition3', 'norm', 'scale'),
      'vector',
    ),
    ('densenet121', 'features.norm5.running_mean', 'batch_stats', ('norm5', 'mean'), 'vector'),
    ('densenet121', 'classifier.weight', 'params', ('classifier', 'kernel'), 'dense'),
  ],
)
def test_key_map_entries(arch, key, collection, path, layout):
  assert weights.torchvision_key_map(arch)[key] == weights.Target(collection, path, layout)


@pytest.mark.parametrize('arch', [n for n in models.NAMES if models.family(n) != 'small_cnn'])
def test_key_map_covers_torchvision_state_dict(arch):
  with torch.device('meta'):
    keys = {
      k
      for k in getattr(torchvision.models, arch)().state_dict()
      if not k.endswith('num_batches_tracked')
    }
  key_map = weights.torchvision_key_map(arch)
  assert set(key_map) == keys
  # One-to-one: no two torch keys land on the same Flax variable.
  assert len({(t.collection, t.path) for t in key_map.values()}) == len(keys)


def test_to_flax_layout_conv_and_dense():
  w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # OIHW
  k = weights.to_flax_layout(w, 'conv')
  assert k.shape == (4, 5, 3, 2) and k[3, 1, 2, 0] == w[0, 2, 3, 1]
  d = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(weights.to_flax_layout(d, 'dense'), d.T)


def test_to_flax_layout_in_blocks_equals_the_plain_transposes():
  """150 output channels: two whole blocks of 64 and a part one, each layout bitwise as one copy."""
  rng = np.random.default_rng(0)
  conv = rng.standard_normal((150, 3, 3, 2), dtype=np.float32)
  dense = rng.standard_normal((150, 7 * 7 * 2), dtype=np.float32)
  nchw = dense.reshape(150, 2, 7, 7).transpose(0, 2, 3, 1).reshape(150, -1)
  for array, layout, want in (
    (conv, 'conv', conv.transpose(2, 3, 1, 0)),
    (dense, 'dense', dense.T),
    (dense, 'dense_nchw', nchw.T),
  ):
    got = weights.to_flax_layout(array, layout)
    assert got.flags.c_contiguous, layout
    np.testing.assert_array_equal(got, want, err_msg=layout)


def test_to_flax_layout_vgg_flatten_order():
  """torch: W @ flatten(NCHW map); Flax: flatten(NHWC map) @ kernel. Same numbers."""
  rng = np.random.RandomState(0)
  fmap = rng.randn(7, 7, 4).astype(np.float32)  # one NHWC map, C = 4
  w = rng.randn(3, 4 * 7 * 7).astype(np.float32)  # torch Linear(196, 3)
  torch_out = w @ fmap.transpose(2, 0, 1).reshape(-1)
  flax_out = fmap.reshape(-1) @ weights.to_flax_layout(w, 'dense_nchw')
  np.testing.assert_allclose(flax_out, torch_out, rtol=1e-5)


# ---------------------------------------------------------------------------- conversion


def test_from_torchvision_fills_every_variable(resnet18_variables, resnet18_sd):
  abstract = jax.eval_shape(
    models.build('resnet18', 1000).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
  )
  for c in ('params', 'batch_stats'):
    assert jax.tree.map(np.shape, resnet18_variables[c]) == jax.tree.map(
      lambda a: a.shape, abstract[c]
    )
  np.testing.assert_array_equal(
    resnet18_variables['batch_stats']['layer2_0']['bn1']['var'],
    resnet18_sd['layer2.0.bn1.running_var'],
  )
  np.testing.assert_array_equal(
    resnet18_variables['params']['fc']['kernel'], resnet18_sd['fc.weight'].T
  )


def test_head_size_from_state_dict():
  variables = weights.from_torchvision('resnet18', _torch_state_dict('resnet18', num_classes=3))
  assert variables['params']['fc']['kernel'].shape == (512, 3)


def test_old_densenet_key_names():
  sd = _torch_state_dict('densenet121')
  # torchvision's published DenseNet files: 'denselayer1.norm.1.weight' for 'denselayer1.norm1...'.
  old = {k.replace('.norm1.', '.norm.1.').replace('.conv2.', '.conv.2.'): v for k, v in sd.items()}
  assert 'features.denseblock1.denselayer1.norm.1.weight' in old
  a, b = weights.from_torchvision('densenet121', sd), weights.from_torchvision('densenet121', old)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_wrong_arch_names_keys_and_guesses(resnet18_sd):
  with pytest.raises(weights.WeightsError) as e:
    weights.from_torchvision('resnet34', resnet18_sd)
  msg = str(e.value)
  assert "does not match 'resnet34'" in msg and '80 missing keys' in msg
  assert "'layer1.2.bn1.bias'" in msg and "looks like a 'resnet18' state dict" in msg
  with pytest.raises(
    weights.WeightsError, match=r"'densenet121': 606 missing.*102 unexpected keys \['bn1.bias'"
  ):
    weights.from_torchvision('densenet121', resnet18_sd)


def test_unexpected_key_and_wrong_shape(resnet18_sd):
  with pytest.raises(weights.WeightsError, match=r"1 unexpected keys \['extra.weight'\]"):
    weights.from_torchvision('resnet18', {**resnet18_sd, 'extra.weight': np.zeros(3)})
  bad = {**resnet18_sd, 'layer1.0.conv1.weight': np.zeros((64, 64, 5, 5), np.float32)}
  with pytest.raises(weights.WeightsError) as e:
    weights.from_torchvision('resnet18', bad)
  assert (
    "'layer1.0.conv1.weight': state dict has (64, 64, 5, 5), resnet18 (num_classes=1000) "
    'expects (64, 64, 3, 3) (Flax params/layer1_0/conv1/kernel (3, 3, 64, 64))' in str(e.value)
  )


def test_small_cnn_has_no_torchvision_counterpart():
  with pytest.raises(weights.WeightsError, match="'cnn_bn' has no torchvision counterpart"):
    weights.from_torchvision('cnn_bn', {})
  with pytest.raises(ValueError, match="Unknown model 'resnet7'"):
    weights.from_torchvision('resnet7', {})


# ---------------------------------------------------------------------------------- sources


def test_pth_round_trip(tmp_path, resnet18_sd):
  path = tmp_path / 'r18.pth'
  torch.save({k: torch.from_numpy(v) for k, v in resnet18_sd.items()}, path)
  loaded = weights.load_state_dict(path)
  assert loaded.keys() == resnet18_sd.keys()
  for k, v in resnet18_sd.items():
    np.testing.assert_array_equal(loaded[k], v)
  # A training checkpoint that wraps the state dict.
  torch.save({'state_dict': {'a': torch.ones(2)}, 'epoch': 3}, tmp_path / 'ckpt.pth')
  np.testing.assert_array_equal(weights.load_state_dict(tmp_path / 'ckpt.pth')['a'], [1, 1])


def test_safetensors_without_torch(tmp_path, resnet18_sd):
  path = tmp_path / 'r18.safetensors'
  safetensors.numpy.save_file(
    {k: np.ascontiguousarray(v) for k, v in resnet18_sd.items()}, str(path)
  )
  # A fresh interpreter in which `import torch` fails: the library must not need it.
  code = (
    'import sys; sys.modules["torch"] = None\n'
    'from jaxcxr.models import weights\n'
    f'v = weights.from_torchvision("resnet18", weights.load_state_dict({str(path)!r}))\n'
    'print(float(v["params"]["fc"]["bias"].sum()), "torch" in sys.modules and '
    'sys.modules["torch"] is not None)'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout.split()
  assert float(out[0]) == pytest.approx(float(resnet18_sd['fc.bias'].sum()), abs=1e-5)
  assert out[1] == 'False'


def test_library_import_does_not_import_torch():
  code = (
    'import sys, jaxcxr.models, jaxcxr.models.weights; '
    'print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout.strip()
  assert out == '[]'


class Evil:
  """Unpickling this would run a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_pth_with_pickled_code_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  torch.save({'conv1.weight': torch.ones(1), 'payload': Evil(marker)}, path)
  with pytest.raises(weights.WeightsError) as e:
    weights.load_state_dict(path)
  assert f'{path} contains pickled objects other than tensors and was refused' in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file(tmp_path, suffix):
  path = tmp_path / f'cut{suffix}'
  arrays = {'w': np.ones((256, 256), np.float32)}
  if suffix == '.pth':
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
  else:
    safetensors.numpy.save_file(arrays, str(path))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(weights.WeightsError, match=f'Could not read {path}: the file is truncated'):
    weights.load_state_dict(path)


def test_bad_local_sources(tmp_path):
  with pytest.raises(weights.WeightsError, match='does not exist'):
    weights.load_state_dict(tmp_path / 'nope.pth')
  (tmp_path / 'w.npz').write_bytes(b'x')
  with pytest.raises(weights.WeightsError, match=r"unknown weight format '\.npz'"):
    weights.load_state_dict(tmp_path / 'w.npz')
  with pytest.raises(weights.WeightsError, match=r'sha256 of .*w\.npz is [0-9a-f]{64}, expected 0'):
    weights.load_state_dict(tmp_path / 'w.npz', expected_sha256='00' * 32)
  with pytest.raises(weights.WeightsError, match="No torchvision URL for 'cnn_bn'"):
    weights.load_state_dict('torchvision:cnn_bn')


def test_cache_dir_env(monkeypatch, tmp_path):
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
  assert weights.default_cache_dir() == tmp_path
  monkeypatch.delenv(weights.CACHE_ENV)
  assert weights.default_cache_dir() == pathlib.Path('~/.cache/jaxcxr/weights').expanduser()


def test_torchvision_urls_embed_sha_prefix():
  assert weights.TORCHVISION_URLS['vgg19'].endswith('/vgg19-dcbb9e9d.pth')
  assert weights.TORCHVISION_URLS['resnet101'].endswith('/resnet101-63fe2227.pth')
  assert weights.TORCHVISION_V2_URLS['resnet101'].endswith('/resnet101-cd907fc2.pth')
  assert weights.TORCHVISION_URLS['densenet201'].endswith('/densenet201-c1103571.pth')
  convertible = {n for n in models.NAMES if models.family(n) != 'small_cnn'}
  assert set(weights.TORCHVISION_URLS) == convertible


@pytest.fixture
def http_server(tmp_path):
  """Serves tmp_path/'served' on 127.0.0.1; yields (base URL, list of requested paths)."""
  root = tmp_path / 'served'
  root.mkdir()
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(root), **kwargs)

    def do_GET(self):  # pylint: disable=invalid-name
      requests.append(self.path)
      if self.path.startswith('/cut/'):  # promises 1000 bytes, sends 10, hangs up
        self.send_response(200)
        self.send_header('Content-Length', '1000')
        self.end_headers()
        self.wfile.write(b'0123456789')
        return
      super().do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.server_address[1]}', root, requests
  server.shutdown()
  server.server_close()


def _save_tiny(path: pathlib.Path) -> str:
  safetensors.numpy.save_file({'w': np.arange(4, dtype=np.float32)}, str(path))
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_url_download_and_cache_hit(http_server, tmp_path):
  base, root, requests = http_server
  tmp = root / 'tiny.safetensors'
  digest = _save_tiny(tmp)
  name = f'tiny-{digest[:8]}.safetensors'  # torchvision-style name: sha256 prefix verified
  tmp.rename(root / name)
  cache = tmp_path / 'cache'
  for _ in range(2):
    sd = weights.load_state_dict(f'{base}/{name}', cache_dir=cache)
    np.testing.assert_array_equal(sd['w'], [0, 1, 2, 3])
  assert requests == [f'/{name}']  # the second call was a cache hit
  assert sorted(p.name for p in cache.iterdir()) == [name]


def test_url_hash_mismatch(http_server, tmp_path):
  base, root, _ = http_server
  _save_tiny(root / 'tiny-deadbeef.safetensors')
  cache = tmp_path / 'cache'
  with pytest.raises(
    weights.WeightsError,
    match=r'sha256 of http://.*/tiny-deadbeef.safetensors \(downloaded\) is '
    r"[0-9a-f]{64}, but its file name 'tiny-deadbeef.safetensors' says it "
    'starts with deadbeef',
  ):
    weights.load_state_dict(f'{base}/tiny-deadbeef.safetensors', cache_dir=cache)
  assert list(cache.iterdir()) == []  # nothing half-verified left in the cache
  # Full expected hash, URL without a prefix in its name.
  digest = _save_tiny(root / 'plain.safetensors')
  with pytest.raises(weights.WeightsError, match=f'expected {"0" * 64}'):
    weights.load_state_dict(f'{base}/plain.safetensors', cache_dir=cache, expected_sha256='0' * 64)
  sd = weights.load_state_dict(f'{base}/plain.safetensors', cache_dir=cache, expected_sha256=digest)
  assert sd['w'].shape == (4,)


def test_url_truncated_download(http_server, tmp_path):
  base, _, _ = http_server
  cache = tmp_path / 'cache'
  with pytest.raises(
    weights.WeightsError, match=f'Download of {base}/cut/w.safetensors is truncated: 10 of 1000'
  ):
    weights.load_state_dict(f'{base}/cut/w.safetensors', cache_dir=cache)
  assert list(cache.iterdir()) == []


def test_url_unreachable(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}/resnet18-f37072fd.pth'
  cache = tmp_path / 'cache'
  with pytest.raises(weights.WeightsError) as e:
    weights.load_state_dict(url, cache_dir=cache)
  msg = str(e.value)
  assert f'Could not download {url}' in msg
  assert f'put the file at {cache / "resnet18-f37072fd.pth"}' in msg
  assert list(cache.iterdir()) == []


# --------------------------------------------------------------------- converted on disk


def test_save_and_load_converted(tmp_path, resnet18_variables):
  out = weights.save_converted(
    tmp_path / 'r18', 'resnet18', resnet18_variables, {'source': 'test', 'sha256': 'ab' * 32}
  )
  meta = weights.read_meta(out)
  assert meta == {
    'arch': 'resnet18',
    'num_classes': 1000,
    'num_params': 11689512,
    'num_batch_stats': 9600,
    'source': 'test',
    'sha256': 'ab' * 32,
  }
  arch, variables = weights.load_converted(out)
  assert arch == 'resnet18'
  jax.tree.map(np.testing.assert_array_equal, variables, resnet18_variables)
  with pytest.raises(weights.WeightsError, match=r'not a converted-weights dir.*launch\.convert'):
    weights.load_converted(tmp_path)


# ------------------------------------------------------------------------ load_pretrained


@pytest.fixture(scope='module')
def three_class_init():
  """Stand-in for `model.init` of a 3-class resnet18: its exact tree, random values (no compile)."""
  model = models.build('resnet18', 3)
  abstract = jax.eval_shape(
    model.init,
    {'params': jax.random.key(7), 'dropout': jax.random.key(8)},
    jnp.zeros((1, 64, 64, 3)),
  )
  rng = np.random.RandomState(0)
  return jax.tree.map(lambda a: rng.randn(*a.shape).astype(a.dtype), abstract)


def test_load_pretrained_keeps_fresh_head(three_class_init, resnet18_variables):
  loaded = weights.load_pretrained(three_class_init, resnet18_variables, skip=('fc',))
  np.testing.assert_array_equal(
    loaded['params']['fc']['kernel'], three_class_init['params']['fc']['kernel']
  )
  assert loaded['params']['fc']['kernel'].shape == (512, 3)
  backbone = {k: v for k, v in loaded['params'].items() if k != 'fc'}
  expected = {k: v for k, v in resnet18_variables['params'].items() if k != 'fc'}
  jax.tree.map(np.testing.assert_array_equal, backbone, expected)
  jax.tree.map(
    np.testing.assert_array_equal, loaded['batch_stats'], resnet18_variables['batch_stats']
  )
  assert 'perturbations' in loaded  # other collections pass through
  # The default skip list is every family's head name.
  default = weights.load_pretrained(three_class_init, resnet18_variables)
  jax.tree.map(np.testing.assert_array_equal, default['params'], loaded['params'])


def test_load_pretrained_mismatches(three_class_init, resnet18_variables):
  params = jax.tree.map(lambda a: a, resnet18_variables['params'])
  del params['layer1_0']['conv1']
  with pytest.raises(
    weights.WeightsError,
    match=r'params/layer1_0/conv1/kernel: missing from the pretrained variables '
    r'\(model has shape \(3, 3, 64, 64\)\)',
  ):
    weights.load_pretrained(three_class_init, {**resnet18_variables, 'params': params})

  stats = jax.tree.map(lambda a: a, resnet18_variables['batch_stats'])
  stats['bn1']['mean'] = np.zeros(65, np.float32)
  with pytest.raises(
    weights.WeightsError,
    match=r'batch_stats/bn1/mean: pretrained shape \(65,\) != model shape '
    r'\(64,\)',
  ):
    weights.load_pretrained(three_class_init, {**resnet18_variables, 'batch_stats': stats})

  extra = {**resnet18_variables['params'], 'extra': {'kernel': np.zeros((2, 2))}}
  with pytest.raises(
    weights.WeightsError,
    match=r'params/extra/kernel: in the pretrained variables'
    r' \(shape \(2, 2\)\) but not in the model',
  ):
    weights.load_pretrained(three_class_init, {**resnet18_variables, 'params': extra})

  # Without skipping the head, its different size is an error naming both shapes.
  with pytest.raises(
    weights.WeightsError,
    match=r'params/fc/kernel: pretrained shape \(512, 1000\) != model shape '
    r'\(512, 3\)',
  ):
    weights.load_pretrained(three_class_init, resnet18_variables, skip=())
