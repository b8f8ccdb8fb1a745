"""ResNet 18/34/50/101/152, layer for layer as torchvision.models.resnet (v1.5).

v1.5: a Bottleneck strides in its 3x3 conv (`conv2`), not in the first 1x1. Flax names mirror
torchvision's: `layer{i}_{j}` is `layer{i}.{j}`, `downsample_0`/`_1` are `downsample.0`/`.1`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import layers

HEAD = 'fc'


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); expansion 1."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    identity = x
    y = layers.conv(self.planes, 3, self.dtype, 'conv1', self.stride, 1)(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(y))
    y = layers.conv(self.planes, 3, self.dtype, 'conv2', 1, 1)(y)
    y = layers.batch_norm(train, self.dtype, 'bn2')(y)
    if self.downsample:
      identity = layers.conv(self.planes, 1, self.dtype, 'downsample_0', self.stride)(x)
      identity = layers.batch_norm(train, self.dtype, 'downsample_1')(identity)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs (ResNet-50/101/152); expansion 4."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    identity = x
    y = layers.conv(self.planes, 1, self.dtype, 'conv1')(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(y))
    y = layers.conv(self.planes, 3, self.dtype, 'conv2', self.stride, 1)(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, 'bn2')(y))
    y = layers.conv(self.planes * self.expansion, 1, self.dtype, 'conv3')(y)
    y = layers.batch_norm(train, self.dtype, 'bn3')(y)
    if self.downsample:
      identity = layers.conv(
        self.planes * self.expansion, 1, self.dtype, 'downsample_0', self.stride
      )(x)
      identity = layers.batch_norm(train, self.dtype, 'downsample_1')(identity)
    return nn.relu(y + identity)


class ResNet(nn.Module):
  """torchvision ResNet; 'cam_features' is the `layer4` output, `layer1`-`layer3` are marked
  'cam_stage_layer1' .. 'cam_stage_layer3' (finer Grad-CAM maps).

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    stage_sizes: blocks per stage (`layers` in torchvision).
    num_classes: size of the head `fc`.
    dtype: compute dtype; params stay float32.
  """

  block: Any
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)
    x = layers.conv(64, 7, self.dtype, 'conv1', 2, 3)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(x))
    x = layers.max_pool(x, 3, 2, 1)
    in_planes = 64
    for i, num_blocks in enumerate(self.stage_sizes):
      planes = 64 * 2**i
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = j == 0 and (stride != 1 or in_planes != planes * self.block.expansion)
        x = self.block(planes, stride, downsample, self.dtype, name=f'layer{i + 1}_{j}')(x, train)
        in_planes = planes * self.block.expansion
      if i < len(self.stage_sizes) - 1:
        x = layers.mark_cam_stage(self, f'layer{i + 1}', x)
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


resnet18 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
resnet34 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
resnet50 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))
resnet101 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 23, 3))
resnet152 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 8, 36, 3))

VARIANTS = {
  'resnet18': resnet18,
  'resnet34': resnet34,
  'resnet50': resnet50,
  'resnet101': resnet101,
  'resnet152': resnet152,
}
