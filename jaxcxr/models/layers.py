"""Layers shared by the model families: torchvision-equivalent BatchNorm, convs and pooling.

Everything here mirrors a torch.nn layer exactly (same padding, same statistics, same pooling bins)
so that converted torchvision weights reproduce torchvision's outputs.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torch.nn.BatchNorm2d(eps=1e-5, momentum=0.1); Flax's momentum is the decay, 1 - 0.1.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  """`nn.BatchNorm` with torchvision's eps/momentum; batch statistics only when `train`."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, name=name)


def conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1,
         padding: int = 0, use_bias: bool = False) -> nn.Conv:
  """`torch.nn.Conv2d(..., kernel, stride, padding)` on NHWC with explicit symmetric padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 dtype=dtype, name=name)


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """`torch.nn.MaxPool2d(window, stride, padding)`: padded cells are -inf, never selected."""
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging matrix with torch's bins [floor(i*n/m), ceil((i+1)*n/m))."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """`torch.nn.AdaptiveAvgPool2d(out_hw)` on NHWC `x` (shapes are static, so bins are too).

  Equal bins (the side divides evenly) are a reshape-mean; otherwise the possibly overlapping
  bins become a fixed averaging matrix per axis.
  """
  n, h, w, c = x.shape
  oh, ow = out_hw
  if h % oh == 0 and w % ow == 0:
    return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
  ph = jnp.asarray(_adaptive_pool_matrix(h, oh), x.dtype)
  pw = jnp.asarray(_adaptive_pool_matrix(w, ow), x.dtype)
  return jnp.einsum('oh,nhwc,pw->nopc', ph, x, pw)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C): `AdaptiveAvgPool2d((1, 1))` followed by `flatten(1)`."""
  return jnp.mean(x, axis=(1, 2))


def mark_cam_features(module: nn.Module, fmap: jnp.ndarray) -> jnp.ndarray:
  """Names `fmap` for Grad-CAM; call it from the top-level module so the path is ('cam_features',).

  `variables['perturbations']['cam_features']` receives the gradient w.r.t. the map and
  `state['intermediates']['cam_features'][0]` its value (with `mutable=['intermediates']`).
  """
  fmap = module.perturb('cam_features', fmap)
  module.sow('intermediates', 'cam_features', fmap)
  return fmap


__all__ = ['batch_norm', 'conv', 'max_pool', 'adaptive_avg_pool', 'global_avg_pool',
           'mark_cam_features', 'BN_EPSILON', 'BN_MOMENTUM']
