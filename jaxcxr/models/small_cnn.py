"""Small CNNs trained from scratch: fast on CPU at 64-224 px, for smoke tests and baselines.

`cnn_small` / `cnn_bn`: four 3x3 conv blocks (16-32-64-128 channels, each followed by a 2x2
max-pool except the last), global average pooling, dropout and a dense head. `cnn_bn` adds
BatchNorm after every conv.

`cnn_res18` / `cnn_res18_half`: torchvision's ResNet-18 layout (7x7/2 stem, 3x3/2 max-pool, four
stages of two `resnet.BasicBlock`s) with a ONE-channel stem, at full (64-512) or half (32-256)
width, for training from scratch on grey radiographs. The grey stem reads channel 0 of the
standard 3-channel input (`to_model_input` repeats the grey image, so channel 0 holds all of it)
and saves two thirds of the stem's work; no ImageNet weights exist for these, by design.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import layers, resnet

HEAD = 'classifier'


class SmallCNN(nn.Module):
  """Plain conv net; 'cam_features' is the last conv activation (before global pooling).

  Every earlier block's activation is marked too ('cam_stage_conv1', ...): Grad-CAM's 'auto' layer
  is the deepest one of at least 7x7 (`jaxcxr.evaluation.gradcam`).

  Attributes:
    num_classes: size of the head.
    widths: output channels of the conv blocks.
    batch_norm: conv -> BatchNorm -> ReLU (no conv bias) instead of conv(+bias) -> ReLU.
    dropout_rate: dropout before the head.
    dtype: compute dtype; params stay float32.
  """

  num_classes: int = 3
  widths: Sequence[int] = (16, 32, 64, 128)
  batch_norm: bool = False
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.widths):
      if i:
        x = layers.max_pool(x, 2, 2)
      x = layers.conv(
        width, 3, self.dtype, f'conv{i + 1}', padding=1, use_bias=not self.batch_norm
      )(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype, f'bn{i + 1}')(x)
      x = nn.relu(x)
      if i < len(self.widths) - 1:  # earlier blocks: finer Grad-CAM maps ('cam_stage_conv<i>')
        x = layers.mark_cam_stage(self, f'conv{i + 1}', x)
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


class GreyResNet(nn.Module):
  """ResNet-18-style network with a one-channel stem; 'cam_features' is the last stage's output.

  The earlier stages' outputs are marked 'cam_stage_layer1' .. 'cam_stage_layer3' (at 112 px:
  28, 14, 7 and 4 cells a side for layer1 .. layer4).

  Attributes:
    num_classes: size of the head.
    widths: channels of the four stages (the stem has widths[0]).
    stage_sizes: `BasicBlock`s per stage.
    dropout_rate: dropout before the head.
    dtype: compute dtype; params stay float32.
  """

  num_classes: int = 3
  widths: Sequence[int] = (64, 128, 256, 512)
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images (grey repeated) -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)[..., :1]
    x = layers.conv(self.widths[0], 7, self.dtype, 'conv1', 2, 3)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(x))
    x = layers.max_pool(x, 3, 2, 1)
    in_width = self.widths[0]
    for i, (width, num_blocks) in enumerate(zip(self.widths, self.stage_sizes, strict=True)):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = j == 0 and (stride != 1 or in_width != width)
        x = resnet.BasicBlock(width, stride, downsample, self.dtype, name=f'layer{i + 1}_{j}')(
          x, train
        )
        in_width = width
      if i < len(self.widths) - 1:
        x = layers.mark_cam_stage(self, f'layer{i + 1}', x)
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


cnn_small = functools.partial(SmallCNN, batch_norm=False)
cnn_bn = functools.partial(SmallCNN, batch_norm=True)
cnn_res18 = functools.partial(GreyResNet, widths=(64, 128, 256, 512))
cnn_res18_half = functools.partial(GreyResNet, widths=(32, 64, 128, 256))
