"""VGG 11/13/16/19 (with and without BatchNorm), layer for layer as torchvision.models.vgg.

Flax names mirror torchvision's: `features_{i}` is `features.{i}` (conv, or BatchNorm right after
it); `fc1`, `fc2` and the head `classifier` are `classifier.0`, `.3` and `.6`. The one layout
difference is the flatten before `fc1`: NHWC here, NCHW in torch (`jaxcxr.models.weights` reorders).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import layers

HEAD = 'classifier'
POOL_HW = (7, 7)  # torchvision's AdaptiveAvgPool2d((7, 7))

# torchvision cfgs "A", "B", "D", "E": conv widths, 'M' = 2x2 max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
  'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  'vgg19': (
    64,
    64,
    'M',
    128,
    128,
    'M',
    256,
    256,
    256,
    256,
    'M',
    512,
    512,
    512,
    512,
    'M',
    512,
    512,
    512,
    512,
    'M',
  ),
}


def feature_layers(cfg: Sequence[int | str], batch_norm: bool) -> list[tuple[int, str, Any]]:
  """torchvision's `features` Sequential as (index, kind, width) with kind in conv/bn/relu/pool."""
  out, i = [], 0
  for v in cfg:
    if v == 'M':
      out.append((i, 'pool', None))
      i += 1
      continue
    kinds = ('conv', 'bn', 'relu') if batch_norm else ('conv', 'relu')
    for kind in kinds:
      out.append((i, kind, v))
      i += 1
  return out


class VGG(nn.Module):
  """torchvision VGG; 'cam_features' is the last conv ReLU output, before the last max-pool; the
  last ReLU before each earlier max-pool is marked 'cam_stage_block1', 'cam_stage_block2', ...

  Attributes:
    cfg: conv widths and 'M' pools (one of `CFGS`).
    batch_norm: the `_bn` variants.
    num_classes: size of the head.
    dropout_rate: torchvision's `dropout` (p) in the classifier.
    classifier_width: hidden width of fc1/fc2 (4096 in torchvision).
    dtype: compute dtype; params stay float32.
  """

  cfg: Sequence[int | str]
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  classifier_width: int = 4096  # torchvision's; smaller only for tiny test models
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(N, H, W, 3) normalised images -> (N, num_classes) logits."""
    x = jnp.asarray(x, self.dtype)
    spec = feature_layers(self.cfg, self.batch_norm)
    last_relu = max(i for i, kind, _ in spec if kind == 'relu')
    # The ReLU right before each max-pool ends a block: its output is a finer Grad-CAM map.
    block_ends = [
      i
      for (i, kind, _), nxt in zip(spec, spec[1:] + [(0, '', 0)], strict=True)
      if kind == 'relu' and nxt[1] == 'pool' and i != last_relu
    ]
    for i, kind, width in spec:
      if kind == 'conv':
        x = layers.conv(width, 3, self.dtype, f'features_{i}', padding=1, use_bias=True)(x)
      elif kind == 'bn':
        x = layers.batch_norm(train, self.dtype, f'features_{i}')(x)
      elif kind == 'relu':
        x = nn.relu(x)
        if i == last_relu:  # the last conv ReLU (before the final max-pool in torchvision cfgs)
          x = layers.mark_cam_features(self, x)
        elif i in block_ends:
          x = layers.mark_cam_stage(self, f'block{block_ends.index(i) + 1}', x)
      else:
        x = layers.max_pool(x, 2, 2)
    x = layers.adaptive_avg_pool(x, POOL_HW)
    x = x.reshape(x.shape[0], -1)  # (N, 7 * 7 * 512) in (h, w, c) order
    for name in ('fc1', 'fc2'):
      x = nn.relu(nn.Dense(self.classifier_width, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x)


vgg11 = functools.partial(VGG, cfg=CFGS['vgg11'])
vgg13 = functools.partial(VGG, cfg=CFGS['vgg13'])
vgg16 = functools.partial(VGG, cfg=CFGS['vgg16'])
vgg19 = functools.partial(VGG, cfg=CFGS['vgg19'])
vgg11_bn = functools.partial(VGG, cfg=CFGS['vgg11'], batch_norm=True)
vgg13_bn = functools.partial(VGG, cfg=CFGS['vgg13'], batch_norm=True)
vgg16_bn = functools.partial(VGG, cfg=CFGS['vgg16'], batch_norm=True)
vgg19_bn = functools.partial(VGG, cfg=CFGS['vgg19'], batch_norm=True)

VARIANTS = {
  'vgg11': vgg11,
  'vgg13': vgg13,
  'vgg16': vgg16,
  'vgg19': vgg19,
  'vgg11_bn': vgg11_bn,
  'vgg13_bn': vgg13_bn,
  'vgg16_bn': vgg16_bn,
  'vgg19_bn': vgg19_bn,
}
