"""DenseNet 121/161/169/201, layer for layer as torchvision.models.densenet.

Flax names mirror torchvision's `features.*` without the `features.` prefix: `conv0`, `norm0`,
`denseblock{i}/denselayer{j}/{norm1,conv1,norm2,conv2}`, `transition{i}/{norm,conv}`, `norm5`,
and the head `classifier`.
"""

import functools
import operator
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcxr.models import layers

HEAD = 'classifier'


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1 bottleneck over the concatenated inputs, then BN-ReLU-Conv3x3.

  With `memory_efficient` the concat + bottleneck is rematerialised in the backward pass
  (torchvision's checkpointed `bn_function`), so the concatenation is never stored.
  """

  growth_rate: int
  bn_size: int
  dropout_rate: float
  memory_efficient: bool
  train: bool
  dtype: Any = jnp.float32
  in_scan: bool = False  # the body of DenseBlock's scan: convs take `input_grad_as_conv`

  def setup(self):
    self.norm1 = layers.batch_norm(self.train, self.dtype, 'norm1')
    self.conv1 = layers.conv(
      self.bn_size * self.growth_rate, 1, self.dtype, 'conv1', input_grad_as_conv=self.in_scan
    )
    self.norm2 = layers.batch_norm(self.train, self.dtype, 'norm2')
    self.conv2 = layers.conv(
      self.growth_rate, 3, self.dtype, 'conv2', padding=1, input_grad_as_conv=self.in_scan
    )
    self.dropout = nn.Dropout(self.dropout_rate, deterministic=not self.train)

  def bottleneck(self, features: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """list of (N, H, W, C_i) -> (N, H, W, bn_size * growth_rate)."""
    return self.conv1(nn.relu(self.norm1(jnp.concatenate(features, axis=-1))))

  def __call__(self, features: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """list of (N, H, W, C_i) -> new features (N, H, W, growth_rate)."""
    bottleneck = DenseLayer.bottleneck
    if self.memory_efficient:
      bottleneck = nn.remat(bottleneck)
    y = self.conv2(nn.relu(self.norm2(bottleneck(self, list(features)))))
    return self.dropout(y) if self.dropout_rate > 0 else y


def _pad_channels(a: jnp.ndarray, width: int, axis: int = -1, value: float = 0.0) -> jnp.ndarray:
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, width - a.shape[axis])
  return jnp.pad(a, pad, constant_values=value)


def _padded_layer_variables(variables: dict, width: int) -> dict:
  """One dense layer's variables with its input-side arrays zero-padded to `width` channels.

  Padded channels have scale 0, bias 0, running mean 0 / var 1 and zero conv1 rows, so they are 0
  after norm1 + ReLU and add nothing to conv1: the layer computes exactly what it computes on its
  unpadded input. The padding is not a parameter: its gradient is dropped by the pad's transpose.
  """
  p, out = variables['params'], {}
  out['params'] = {
    'norm1': {k: _pad_channels(v, width) for k, v in p['norm1'].items()},
    'conv1': {'kernel': _pad_channels(p['conv1']['kernel'], width, axis=2)},
    'norm2': p['norm2'],
    'conv2': p['conv2'],
  }
  if 'batch_stats' in variables:
    s = variables['batch_stats']
    out['batch_stats'] = {
      'norm1': {
        'mean': _pad_channels(s['norm1']['mean'], width),
        'var': _pad_channels(s['norm1']['var'], width, value=1.0),
      },
      'norm2': s['norm2'],
    }
  return out


class DenseBlock(nn.Module):
  """`num_layers` DenseLayers, each seeing the concatenation of all earlier outputs.

  With `scan_chunk` > 0 the layers run as a `lax.scan` over chunks of `scan_chunk` layers: each
  chunk writes its layers' outputs into a feature buffer preallocated at the chunk's final width,
  and every layer of the chunk reads the whole buffer (the channels not yet written are zeros, and
  the layer's input-side parameters are zero-padded to match, `_padded_layer_variables`). XLA then
  compiles one layer body per chunk instead of one per layer (DenseNet-201 with `scan_chunk=8`:
  13 bodies instead of 98), which is what makes its compile short; the price is the 1x1
  bottleneck over up to `scan_chunk - 1` layers' worth of zero channels. Parameter names, shapes
  and initialisation are the unrolled block's (the unrolled path declares them at init), so
  checkpoints, converted torchvision weights and `scan_chunk` are independent. Training with
  dropout > 0 runs unrolled.
  """

  num_layers: int
  growth_rate: int
  bn_size: int
  dropout_rate: float
  memory_efficient: bool
  dtype: Any = jnp.float32
  scan_chunk: int = 0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.scan_chunk > 0 and not self.is_initializing() and not (train and self.dropout_rate > 0):
      return self._scanned(x, train)
    features = [x]
    for j in range(self.num_layers):
      features.append(
        DenseLayer(
          self.growth_rate,
          self.bn_size,
          self.dropout_rate,
          self.memory_efficient,
          train,
          self.dtype,
          name=f'denselayer{j + 1}',
        )(features)
      )
    return jnp.concatenate(features, axis=-1)

  def _scanned(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The block as `lax.scan`s over chunks of layers (see the class docstring)."""
    g, c0 = self.growth_rate, x.shape[-1]
    layer = DenseLayer(g, self.bn_size, 0.0, self.memory_efficient, train, self.dtype, in_scan=True)

    def body(buffer, layer_input):
      variables, offset = layer_input
      if train:
        y, updates = layer.apply(variables, [buffer], mutable=['batch_stats'])
      else:
        y, updates = layer.apply(variables, [buffer]), {}
      return lax.dynamic_update_slice_in_dim(
        buffer, y.astype(buffer.dtype), offset, axis=3
      ), updates

    names = [f'denselayer{j + 1}' for j in range(self.num_layers)]
    variables = {
      col: tree for col, tree in self.variables.items() if col in ('params', 'batch_stats')
    }
    for start in range(0, self.num_layers, self.scan_chunk):
      chunk = range(start, min(start + self.scan_chunk, self.num_layers))
      width = c0 + chunk.stop * g
      stacked = jax.tree.map(
        lambda *a: jnp.stack(a),
        *[
          _padded_layer_variables({col: tree[names[j]] for col, tree in variables.items()}, width)
          for j in chunk
        ],
      )
      offsets = jnp.array([c0 + j * g for j in chunk], jnp.int32)
      x, updates = lax.scan(body, _pad_channels(x, width), (stacked, offsets))
      for i, j in enumerate(chunk):  # running statistics of the real channels only
        if train:
          stats = jax.tree.map(operator.itemgetter(i), updates['batch_stats'])
          stats['norm1'] = {k: v[: c0 + j * g] for k, v in stats['norm1'].items()}
          self.put_variable('batch_stats', names[j], stats)
    return x


class Transition(nn.Module):
  """BN-ReLU-Conv1x1 to `features` channels, then 2x2 average pooling."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = nn.relu(layers.batch_norm(train, self.dtype, 'norm')(x))
    x = layers.conv(self.features, 1, self.dtype, 'conv')(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """torchvision DenseNet-BC; 'cam_features' is relu(norm5(features)); the outputs of dense blocks
  1-3 (before their transition) are marked 'cam_stage_denseblock1' .. 'cam_stage_denseblock3'.

  Attributes:
    growth_rate: channels each dense layer adds.
    block_config: dense layers per block.
    num_init_features: channels of `conv0`.
    bn_size: bottleneck width multiplier (of growth_rate).
    dropout_rate: dropout after each dense layer (torchvision `drop_rate`, default 0).
    num_classes: size of the head.
    memory_efficient: rematerialise each concat + bottleneck (identical outputs, less memory).
    dtype: compute dtype; params stay float32.
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  dropout_rate: float = 0.0
  num_classes: int = 1000
  memory_efficient: bool = False
  dtype: Any = jnp.float32
  scan_chunk: int = 0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)
    x = layers.conv(self.num_init_features, 7, self.dtype, 'conv0', 2, 3)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'norm0')(x))
    x = layers.max_pool(x, 3, 2, 1)
    num_features = self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(
        num_layers,
        self.growth_rate,
        self.bn_size,
        self.dropout_rate,
        self.memory_efficient,
        self.dtype,
        self.scan_chunk,
        name=f'denseblock{i + 1}',
      )(x, train)
      num_features += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        x = layers.mark_cam_stage(self, f'denseblock{i + 1}', x)
        num_features //= 2
        x = Transition(num_features, self.dtype, name=f'transition{i + 1}')(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'norm5')(x))
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


densenet121 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64
)
densenet161 = functools.partial(
  DenseNet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96
)
densenet169 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64
)
densenet201 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64
)

VARIANTS = {
  'densenet121': densenet121,
  'densenet161': densenet161,
  'densenet169': densenet169,
  'densenet201': densenet201,
}
