"""Layers shared by the model families: torchvision-equivalent BatchNorm, convs and pooling.

Everything here mirrors a torch.nn layer exactly (same padding, same statistics, same pooling bins)
so that converted torchvision weights reproduce torchvision's outputs.
"""

import contextlib
import contextvars
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any

# torch.nn.BatchNorm2d(eps=1e-5, momentum=0.1); Flax's momentum is the decay, 1 - 0.1.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  """`nn.BatchNorm` with torchvision's eps/momentum; batch statistics only when `train`."""
  return nn.BatchNorm(
    use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, name=name
  )


_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
  return lax.conv_general_dilated(
    x, kernel, (stride, stride), ((padding, padding),) * 2, dimension_numbers=_DIMENSION_NUMBERS
  )


def _strided_taps(
  xp: jnp.ndarray, kh: int, kw: int, stride: int, out_hw: tuple[int, int]
) -> list[jnp.ndarray]:
  """The kh*kw strided views (N, Ho, Wo, C) of an already padded NHWC input, row-major: view
  (i, j) holds the window element at offset (i, j) of every output position."""
  n, _, _, c = xp.shape
  ho, wo = out_hw
  return [
    lax.slice(
      xp,
      (0, i, j, 0),
      (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
      (1, stride, stride, 1),
    )
    for i in range(kh)
    for j in range(kw)
  ]


def _untap(shares: list[jnp.ndarray], kw: int, stride: int, padding: int, padded_hw) -> jnp.ndarray:
  """The transpose of `_strided_taps`: each tap's (N, Ho, Wo, C) share, row-major with `kw` per
  row, put back at its offsets in the padded input (one strided `lax.pad`, interior padding
  stride - 1), summed, and the `padding` cut off again."""
  hp, wp = padded_hw
  n, ho, wo, c = shares[0].shape
  zero = jnp.zeros((), shares[0].dtype)
  total = jnp.zeros((n, hp, wp, c), shares[0].dtype)
  for t, share in enumerate(shares):
    i, j = divmod(t, kw)
    config = (
      (0, 0, 0),
      (i, hp - i - stride * (ho - 1) - 1, stride - 1),
      (j, wp - j - stride * (wo - 1) - 1, stride - 1),
      (0, 0, 0),
    )
    total = total + lax.pad(share, zero, config)
  p = padding
  return total[:, p : hp - p, p : wp - p, :] if p else total


def _im2col_patches(
  x: jnp.ndarray, kh: int, kw: int, stride: int, padding: int, out_hw: tuple[int, int]
) -> jnp.ndarray:
  """(N, Ho, Wo, kh*kw*C): the kh*kw strided views of the zero-padded input concatenated along
  channels, row-major (a 1x1 conv needs no copy)."""
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  taps = _strided_taps(x, kh, kw, stride, out_hw)
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def im2col_weight_grad(
  x: jnp.ndarray, g: jnp.ndarray, kernel_shape: tuple[int, ...], stride: int, padding: int
) -> jnp.ndarray:
  """dL/dkernel (kh, kw, C, O) of `_conv2d` as one matmul over N*Ho*Wo: the `_im2col_patches`
  (N, Ho, Wo, kh*kw*C) contracted with the output gradient g (N, Ho, Wo, O):
  (kh*kw*C, N*Ho*Wo) @ (N*Ho*Wo, O).
  """
  kh, kw, c, o = kernel_shape
  patches = _im2col_patches(x, kh, kw, stride, padding, g.shape[1:3])
  return jnp.einsum('nhwk,nhwo->ko', patches, g).reshape(kh, kw, c, o)


def input_grad_by_forward_conv(g: jnp.ndarray, kernel: jnp.ndarray, padding: int) -> jnp.ndarray:
  """dL/dx of a stride-1 `_conv2d` as a forward conv of `g` with the flipped, transposed kernel.

  The flipped kernel is materialised behind an optimisation barrier, so XLA sees a plain forward
  convolution. Inside a `lax.scan` body (the scanned DenseNet blocks), where the kernel is a slice
  of the stacked layer kernels, XLA:CPU lowers its own input gradient to a generic convolution
  that made a DenseNet-121 train step 2.3x slower (docs/PERFORMANCE.md); this form keeps it on
  the fast forward-convolution path.
  """
  kh = kernel.shape[0]
  flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  return _conv2d(g, flipped, 1, kh - 1 - padding)


def smaller_than_kernel(hw: tuple[int, ...], kernel_shape: tuple[int, ...]) -> bool:
  """Whether a conv's spatial input `hw` is smaller than its kernel in height or width.

  XLA:CPU (jaxlib 0.12) swaps the roles of such a conv's operands (the feature map becomes the
  window) and runs the result as a generic loop, not a library kernel: a 3x3 conv on a 2x2 map
  (ResNet's last stage at 64 px, DenseNet's last block) ran at 8 GFLOP/s, 20-30x below the same
  conv on a 4x4 map (docs/PERFORMANCE.md). Its input gradient (a conv of the 2x2 output gradient)
  hits the same path.
  """
  return hw[0] < kernel_shape[0] or hw[1] < kernel_shape[1]


def conv_by_matmul(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
  """`_conv2d` as one matmul: the `_im2col_patches` (N, Ho, Wo, kh*kw*C) times the kernel as a
  (kh*kw*C, O) matrix."""
  kh, kw, c, o = kernel.shape
  ho = (x.shape[1] + 2 * padding - kh) // stride + 1
  wo = (x.shape[2] + 2 * padding - kw) // stride + 1
  patches = _im2col_patches(x, kh, kw, stride, padding, (ho, wo))
  return jnp.einsum('nhwk,ko->nhwo', patches, kernel.reshape(kh * kw * c, o))


def input_grad_by_matmul(
  g: jnp.ndarray, kernel: jnp.ndarray, x_shape: tuple[int, ...], stride: int, padding: int
) -> jnp.ndarray:
  """dL/dx of `_conv2d` (input shape `x_shape`) as the transpose of `conv_by_matmul`: the patch
  gradients g @ kernel^T (one matmul), each tap's share put back in place (`_untap`)."""
  kh, kw, c, o = kernel.shape
  dpatches = jnp.einsum('nhwo,ko->nhwk', g, kernel.reshape(kh * kw * c, o))
  shares = [dpatches[..., t * c : (t + 1) * c] for t in range(kh * kw)]
  padded_hw = (x_shape[1] + 2 * padding, x_shape[2] + 2 * padding)
  return _untap(shares, kw, stride, padding, padded_hw)


_XLA_CONVS_ONLY = contextvars.ContextVar('jaxcxr_xla_convs_only', default=False)


@contextlib.contextmanager
def xla_convs_only():
  """Within it, `conv2d`'s forward is XLA's convolution on every platform, without
  `lax.platform_dependent`: for tracers that translate a jaxpr instead of lowering it (the ONNX
  export, whose converter has no rule for the platform switch; ONNX runtimes run Conv well)."""
  token = _XLA_CONVS_ONLY.set(True)
  try:
    yield
  finally:
    _XLA_CONVS_ONLY.reset(token)


def _conv2d_on_platform(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int):
  """`_conv2d`; on CPU `conv_by_matmul` where the input is `smaller_than_kernel`."""
  if _XLA_CONVS_ONLY.get() or not smaller_than_kernel(x.shape[1:3], kernel.shape):
    return _conv2d(x, kernel, stride, padding)
  return lax.platform_dependent(
    x,
    kernel,
    cpu=lambda x, k: conv_by_matmul(x, k, stride, padding),
    default=lambda x, k: _conv2d(x, k, stride, padding),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(
  x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int, input_grad_as_conv: bool = False
) -> jnp.ndarray:
  """NHWC x HWIO convolution; on CPU its weight gradient is `im2col_weight_grad`.

  Why (docs/PERFORMANCE.md): XLA:CPU lowers a conv's weight gradient to a convolution whose window
  is the whole feature map (batch contracted) and runs it several times slower than the forward
  conv; in per-op profiles of full train steps it is the largest cost (resnet101 at 128 px: about
  half the step). As one matmul it runs at matmul speed (train steps 1.5-2x faster, measured A/B).
  The forward pass and the input gradient are XLA's own, so outputs (and torchvision parity) are
  unchanged, except on maps `smaller_than_kernel` (a 3x3 conv on a 2x2 map), which XLA:CPU runs
  20-30x slower than its other convs: there the forward is `conv_by_matmul` and the input
  gradient `input_grad_by_matmul` (the same sums in another order: float32 round-off). On GPU /
  TPU every part stays XLA's (cuDNN / the TPU convolution units do them well, and the im2col
  patches would cost accelerator memory): `lax.platform_dependent` picks the branch when the step
  is lowered. With `input_grad_as_conv` (convs inside a `lax.scan` body), a stride-1 conv's input
  gradient on CPU is `input_grad_by_forward_conv`.
  """
  return _conv2d_on_platform(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding, input_grad_as_conv):
  del input_grad_as_conv
  return _conv2d_on_platform(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, input_grad_as_conv, residuals, g):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x, k: _conv2d(x, k, stride, padding), x, kernel)

  def xla_grads(g):
    return vjp(g)

  def cpu_grads(g):
    dkernel = im2col_weight_grad(x, g, kernel.shape, stride, padding).astype(kernel.dtype)
    if smaller_than_kernel(g.shape[1:3], kernel.shape):
      return input_grad_by_matmul(g, kernel, x.shape, stride, padding).astype(x.dtype), dkernel
    if input_grad_as_conv and stride == 1:
      return input_grad_by_forward_conv(g, kernel, padding).astype(x.dtype), dkernel
    return vjp(g)[0], dkernel

  return lax.platform_dependent(g, cpu=cpu_grads, default=xla_grads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv2d(nn.Module):
  """`torch.nn.Conv2d(..., kernel, stride, padding)` on NHWC; params `kernel` (HWIO), `bias`.

  Same parameters, initialisation and forward computation as `nn.Conv` with explicit symmetric
  padding; only the weight gradient is computed differently (`conv2d`).
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  input_grad_as_conv: bool = False  # inside a lax.scan body: see `conv2d`

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32
    )
    bias = (
      self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, self.input_grad_as_conv)
    return y if bias is None else y + bias


def conv(
  features: int,
  kernel: int,
  dtype: Dtype,
  name: str,
  stride: int = 1,
  padding: int = 0,
  use_bias: bool = False,
  input_grad_as_conv: bool = False,
) -> Conv2d:
  """`torch.nn.Conv2d(..., kernel, stride, padding)` on NHWC with explicit symmetric padding."""
  return Conv2d(features, kernel, stride, padding, use_bias, dtype, input_grad_as_conv, name=name)


def _max_pool(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
  return nn.max_pool(
    x, (window, window), strides=(stride, stride), padding=((padding, padding), (padding, padding))
  )


def max_pool_grad_by_taps(
  x: jnp.ndarray, g: jnp.ndarray, window: int, stride: int, padding: int
) -> jnp.ndarray:
  """dL/dx of `_max_pool`: each window's gradient goes to its first maximum (torch's choice).

  The window*window strided views ("taps") of the -inf padded input are compared in row-major
  order; each tap's share of `g` is scattered back with one strided `lax.pad` (interior padding
  stride-1). Elementwise work only, instead of XLA:CPU's select-and-scatter expansion (a
  reduce-window that tracks the argmax with four int32 iotas of the input's size, then a scatter).
  """
  p = padding
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf) if p else x
  taps = _strided_taps(xp, window, window, stride, g.shape[1:3])
  best = functools.reduce(jnp.maximum, taps)
  taken = jnp.zeros(g.shape, bool)
  zero = jnp.zeros((), g.dtype)
  shares = []
  for tap in taps:
    first = (tap == best) & ~taken
    taken = taken | first
    shares.append(jnp.where(first, g, zero))
  return _untap(shares, window, stride, p, xp.shape[1:3])


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """`torch.nn.MaxPool2d(window, stride, padding)`: padded cells are -inf, never selected.

  Tiled windows (window == stride, no padding: VGG, the small CNNs) take `_tiled_max_pool`, whose
  CPU gradient is `max_pool_grad_by_taps` (`cnn_bn`'s train step at 64 px spent about a sixth of
  its time in XLA:CPU's select-and-scatter expansion; 147 -> 176 img/s measured). Each input cell
  is in one window there, so the gradient is bitwise XLA's. Overlapping windows (the 3x3 stride-2
  stems of ResNet / DenseNet) keep XLA's gradient: by taps it would sum a cell's shares in another
  order (other rounding, so other training trajectories) for no measured gain (one pool per net).
  """
  if window == stride and not padding:
    return _tiled_max_pool(x, window)
  return _max_pool(x, window, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
  return _max_pool(x, window, window, 0)


def _tiled_max_pool_fwd(x, window):
  return _max_pool(x, window, window, 0), x


def _tiled_max_pool_bwd(window, x, g):
  def xla_grad(g):
    return jax.vjp(lambda x: _max_pool(x, window, window, 0), x)[1](g)[0]

  def cpu_grad(g):
    return max_pool_grad_by_taps(x, g, window, window, 0).astype(x.dtype)

  return (lax.platform_dependent(g, cpu=cpu_grad, default=xla_grad),)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


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


CAM_FEATURES = 'cam_features'  # the last stage: the OOD score's features, Grad-CAM's coarsest map
CAM_STAGE_PREFIX = 'cam_stage_'  # an earlier stage's output: 'cam_stage_layer3'


def mark_cam_features(module: nn.Module, fmap: jnp.ndarray) -> jnp.ndarray:
  """Names `fmap` for Grad-CAM; call it from the top-level module so the path is ('cam_features',).

  `variables['perturbations']['cam_features']` receives the gradient w.r.t. the map and
  `state['intermediates']['cam_features'][0]` its value (with `mutable=['intermediates']`).
  """
  fmap = module.perturb(CAM_FEATURES, fmap)
  module.sow('intermediates', CAM_FEATURES, fmap)
  return fmap


def mark_cam_stage(module: nn.Module, stage: str, fmap: jnp.ndarray) -> jnp.ndarray:
  """Names an earlier stage's output `fmap` 'cam_stage_<stage>' for Grad-CAM (finer maps).

  Same contract as `mark_cam_features`, under another name: the Grad-CAM layer is chosen by name
  at explanation time (`jaxcxr.evaluation.gradcam`, 'auto': the deepest marked map of at least 7x7
  at the input size), while 'cam_features' stays the last stage the OOD score is fitted on.
  """
  name = CAM_STAGE_PREFIX + stage
  fmap = module.perturb(name, fmap)
  module.sow('intermediates', name, fmap)
  return fmap


__all__ = [
  'BN_EPSILON',
  'BN_MOMENTUM',
  'CAM_FEATURES',
  'CAM_STAGE_PREFIX',
  'Conv2d',
  'adaptive_avg_pool',
  'batch_norm',
  'conv',
  'conv2d',
  'global_avg_pool',
  'im2col_weight_grad',
  'input_grad_by_forward_conv',
  'mark_cam_features',
  'mark_cam_stage',
  'max_pool',
  'max_pool_grad_by_taps',
]
