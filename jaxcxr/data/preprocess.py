"""Preprocessing shared by training, evaluation and inference.

Host side (uint8 all the way, 4x less to move than float32):
  file -> `images.decode_grey` (any mode -> 8-bit grey, see jaxcxr.data.images)
       -> `images.resize_grey` to the stored size (dataset preparation; automatic: 224 px for a
          folder, so one prepared dataset serves every model size up to 224)
       -> to `image_size` (eval/inference: `resize_grey`; train: inside the augmentation warp,
          after a `resize_grey` when the stored side is larger, see jaxcxr.data.augment)
       -> uint8 (S, S, 1).
Device side, inside the jitted steps: `to_model_input` casts to [0, 1], repeats grey to 3 channels
and normalises with the torchvision ImageNet mean/std (what the pretrained weights expect).
`to_model_input_np` is its numpy twin: the preprocessing spec for ONNX / leaderboard users.

Why on the device: `python -m launch.benchmark_data` (batch 64 x 224 x 224, CPU backend, 2-core
box under load) measured host float32 normalise + device_put 353 ms/batch vs uint8 device_put +
jitted `to_model_input` 88 ms/batch; on an accelerator the uint8 path also moves 12x fewer bytes
(1 B/px grey vs 3 x 4 B/px).
"""

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import images as images_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INFERENCE_REMEDY = 'Check that it is a readable PNG/JPEG/BMP/TIFF/DICOM chest X-ray image.'


def _scale_bias(xp, dtype):
  # (x / 255 - mean) / std == x * scale + bias, per channel.
  std = xp.asarray(IMAGENET_STD, dtype)
  return 1.0 / (255.0 * std), -xp.asarray(IMAGENET_MEAN, dtype) / std


def to_model_input(images_uint8, dtype=jnp.float32):
  """uint8 (..., H, W, 1 or 3) -> `dtype` (..., H, W, 3), ImageNet-normalised (torchvision way).

  Runs on the device inside jit; the arithmetic is float32 and the result is cast to `dtype`.
  """
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  elif x.shape[-1] != 3:
    raise ValueError(f'to_model_input: expected 1 or 3 channels, got shape {x.shape}')
  scale, bias = _scale_bias(jnp, jnp.float32)
  return (x * scale + bias).astype(dtype)


def to_model_input_np(images_uint8: np.ndarray, dtype=np.float32) -> np.ndarray:
  """Numpy twin of `to_model_input` (same numbers to float32 rounding)."""
  x = np.asarray(images_uint8).astype(np.float32)
  if x.shape[-1] == 1:
    x = np.broadcast_to(x, x.shape[:-1] + (3,))
  elif x.shape[-1] != 3:
    raise ValueError(f'to_model_input_np: expected 1 or 3 channels, got shape {x.shape}')
  scale, bias = _scale_bias(np, np.float32)
  return (x * scale + bias).astype(dtype)


# Test-time augmentation (config.eval.tta): (zoom, shift x, shift y), shifts as fractions of the
# side. The input itself, four shifts and two zooms: milder versions of the training augmentation
# (translate 0.06, zoom 0.9-1.1). docs/RESULTS.md has what they bought on real X-rays.
IDENTITY_VIEW = (1.0, 0.0, 0.0)  # (zoom, dx, dy) of the input itself
TTA_VIEWS = (
  IDENTITY_VIEW,
  (1.0, 0.04, 0.0),
  (1.0, -0.04, 0.0),
  (1.0, 0.0, 0.04),
  (1.0, 0.0, -0.04),
  (1.08, 0.0, 0.0),
  (0.93, 0.0, 0.0),
)


def tta_views(images, views=TTA_VIEWS) -> jax.Array:
  """(B, H, W, C) images -> float32 (V * B, H, W, C): view v is rows v*B ... (v+1)*B - 1.

  Each view zooms about the image centre and shifts (bilinear, zeros where the view leaves the
  image); the identity view is the input exactly. Runs inside jit.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  _, h, w, _ = x.shape
  out = []
  for zoom, dx, dy in views:
    if (zoom, dx, dy) == IDENTITY_VIEW:
      out.append(x)
      continue
    scale = jnp.array([zoom, zoom], jnp.float32)
    shift = jnp.array([(1 - zoom) * h / 2 + dy * h, (1 - zoom) * w / 2 + dx * w], jnp.float32)
    out.append(jax.image.scale_and_translate(x, x.shape, (1, 2), scale, shift, 'linear'))
  return jnp.concatenate(out, axis=0)


def view_averaged_probs(
  logits_fn: Callable[[jax.Array], jax.Array], images, views=TTA_VIEWS
) -> jax.Array:
  """Softmax of `logits_fn` (model input -> logits) averaged over `tta_views`: float32 (B, C)."""
  return average_views(logits_fn(tta_views(images, views)), len(views))


def average_views(logits: jax.Array, num_views: int) -> jax.Array:
  """(V * B, C) logits of `tta_views` -> float32 (B, C): the softmax averaged over the views."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(probs.reshape((num_views, -1) + probs.shape[1:]), axis=0)


def prepare_grey(image: np.ndarray, image_size: int, stored_size: int = 0) -> np.ndarray:
  """Decoded uint8 (H, W) -> uint8 (image_size, image_size, 1), exactly as eval sees a record.

  `stored_size` (if set and different) reproduces the two resamples of a prepared dataset
  (file -> stored size -> image size); 0 resizes once, as a dataset stored at image_size does.
  """
  if stored_size and stored_size != image_size:
    image = images_lib.resize_grey(image, stored_size)
  return images_lib.resize_grey(image, image_size)[..., None]


def load_image_for_inference(
  path: str | os.PathLike,
  image_size: int,
  *,
  stored_size: int = 0,
  max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
) -> np.ndarray:
  """Reads an image file for predict / Grad-CAM: uint8 (image_size, image_size, 1).

  Raises:
    images.ImageError (a ValueError) naming the file for unreadable, corrupt or oversized images.
  """
  image = images_lib.load_grey(path, max_pixels=max_pixels, remedy=_INFERENCE_REMEDY)
  return prepare_grey(image, image_size, stored_size)
