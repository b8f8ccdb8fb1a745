"""Small CNNs trained from scratch: fast on CPU at 64-224 px, for smoke tests and baselines.

Four 3x3 conv blocks (16-32-64-128 channels, each followed by a 2x2 max-pool except the last),
global average pooling, dropout and a dense head. `cnn_bn` adds BatchNorm after every conv.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import layers

HEAD = 'classifier'


class SmallCNN(nn.Module):
  """Plain conv net; the Grad-CAM map is the last conv activation (before global pooling).

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
      x = layers.conv(width, 3, self.dtype, f'conv{i + 1}', padding=1,
                      use_bias=not self.batch_norm)(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype, f'bn{i + 1}')(x)
      x = nn.relu(x)
    x = layers.mark_cam_features(self, x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


cnn_small = functools.partial(SmallCNN, batch_norm=False)
cnn_bn = functools.partial(SmallCNN, batch_norm=True)
