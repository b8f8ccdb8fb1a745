"""Model zoo: `build(name, num_classes, **overrides)` returns a Flax Linen module.

Every model maps float32 NHWC images (ImageNet mean/std normalised) to `(N, num_classes)` logits,
takes `train` (BatchNorm batch statistics, dropout) and marks its Grad-CAM feature map as
'cam_features' (see `layers.mark_cam_features` and docs/ARCHITECTURE.md).

The torchvision families (VGG, ResNet, DenseNet) match torchvision layer for layer so that
`jaxcxr.models.weights.from_torchvision` loads ImageNet weights exactly.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxcxr.models import densenet, resnet, small_cnn, vgg

# name -> (family, module constructor: a functools.partial of the family's class).
_REGISTRY: dict[str, tuple[str, Callable[..., nn.Module]]] = {
  'cnn_small': ('small_cnn', small_cnn.cnn_small),
  'cnn_bn': ('small_cnn', small_cnn.cnn_bn),
  'cnn_res18': ('small_cnn', small_cnn.cnn_res18),
  'cnn_res18_half': ('small_cnn', small_cnn.cnn_res18_half),
  **{name: ('vgg', fn) for name, fn in vgg.VARIANTS.items()},
  **{name: ('resnet', fn) for name, fn in resnet.VARIANTS.items()},
  **{name: ('densenet', fn) for name, fn in densenet.VARIANTS.items()},
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Top-level parameter name of the classification head (the part `num_classes` re-sizes), keyed by
# family and, for convenience, by every model name. Everything else is the backbone.
_FAMILY_HEADS = {
  'small_cnn': small_cnn.HEAD,
  'vgg': vgg.HEAD,
  'resnet': resnet.HEAD,
  'densenet': densenet.HEAD,
}
HEAD_PARAMS: dict[str, str] = {
  **_FAMILY_HEADS,
  **{name: _FAMILY_HEADS[fam] for name, (fam, _) in _REGISTRY.items()},
}


def family(name: str) -> str:
  """Family of a model name ('vgg', 'resnet', 'densenet' or 'small_cnn')."""
  _check_name(name)
  return _REGISTRY[name][0]


def _check_name(name: str) -> None:
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; choose one of: {", ".join(NAMES)}')


def build(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds model `name` with a `num_classes` head.

  Args:
    name: one of `NAMES`.
    num_classes: size of the classification head.
    **overrides: module attributes, e.g. `dtype=jnp.bfloat16`, `dropout_rate=0.3` (VGG,
      DenseNet, small CNNs; ResNet has no dropout), `memory_efficient=True` (DenseNet).

  Returns:
    An unbound `flax.linen.Module`.

  Raises:
    ValueError: unknown `name` (the message lists `NAMES`), `num_classes < 1`, or an override
      that is not an attribute of the model (the message lists the valid ones).
  """
  _check_name(name)
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  constructor = _REGISTRY[name][1]
  fields = set(constructor.func.__dataclass_fields__) - {'parent', 'name', 'num_classes'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'{name} has no option(s) {unknown}; its options: {sorted(fields)}')
  return constructor(num_classes=num_classes, **overrides)
