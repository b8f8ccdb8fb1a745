"""DenseNet 121/161/169/201, layer for layer as torchvision.models.densenet.

Flax names mirror torchvision's `features.*` without the `features.` prefix: `conv0`, `norm0`,
`denseblock{i}/denselayer{j}/{norm1,conv1,norm2,conv2}`, `transition{i}/{norm,conv}`, `norm5`,
and the head `classifier`.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

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

  def setup(self):
    self.norm1 = layers.batch_norm(self.train, self.dtype, 'norm1')
    self.conv1 = layers.conv(self.bn_size * self.growth_rate, 1, self.dtype, 'conv1')
    self.norm2 = layers.batch_norm(self.train, self.dtype, 'norm2')
    self.conv2 = layers.conv(self.growth_rate, 3, self.dtype, 'conv2', padding=1)
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


class DenseBlock(nn.Module):
  """`num_layers` DenseLayers, each seeing the concatenation of all earlier outputs."""
  num_layers: int
  growth_rate: int
  bn_size: int
  dropout_rate: float
  memory_efficient: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    features = [x]
    for j in range(self.num_layers):
      features.append(DenseLayer(self.growth_rate, self.bn_size, self.dropout_rate,
                                 self.memory_efficient, train, self.dtype,
                                 name=f'denselayer{j + 1}')(features))
    return jnp.concatenate(features, axis=-1)


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
  """torchvision DenseNet-BC; the Grad-CAM map is relu(norm5(features)).

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

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)
    x = layers.conv(self.num_init_features, 7, self.dtype, 'conv0', 2, 3)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'norm0')(x))
    x = layers.max_pool(x, 3, 2, 1)
    num_features = self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.dropout_rate,
                     self.memory_efficient, self.dtype, name=f'denseblock{i + 1}')(x, train)
      num_features += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        num_features //= 2
        x = Transition(num_features, self.dtype, name=f'transition{i + 1}')(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'norm5')(x))
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


densenet121 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16),
                                num_init_features=64)
densenet161 = functools.partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24),
                                num_init_features=96)
densenet169 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 32, 32),
                                num_init_features=64)
densenet201 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 48, 32),
                                num_init_features=64)

VARIANTS = {'densenet121': densenet121, 'densenet161': densenet161,
            'densenet169': densenet169, 'densenet201': densenet201}
