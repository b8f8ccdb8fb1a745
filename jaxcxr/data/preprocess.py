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
from typing import Union

import jax.numpy as jnp
import numpy as np

from jaxcxr.data import images as images_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INFERENCE_REMEDY = 'Check that it is a readable PNG/JPEG/BMP/TIFF chest X-ray image.'


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


def prepare_grey(image: np.ndarray, image_size: int, stored_size: int = 0) -> np.ndarray:
  """Decoded uint8 (H, W) -> uint8 (image_size, image_size, 1), exactly as eval sees a record.

  `stored_size` (if set and different) reproduces the two resamples of a prepared dataset
  (file -> stored size -> image size); 0 resizes once, as a dataset stored at image_size does.
  """
  if stored_size and stored_size != image_size:
    image = images_lib.resize_grey(image, stored_size)
  return images_lib.resize_grey(image, image_size)[..., None]


def load_image_for_inference(path: Union[str, os.PathLike], image_size: int, *,
                             stored_size: int = 0,
                             max_pixels: int = images_lib.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Reads an image file for predict / Grad-CAM: uint8 (image_size, image_size, 1).

  Raises:
    images.ImageError (a ValueError) naming the file for unreadable, corrupt or oversized images.
  """
  image = images_lib.load_grey(path, max_pixels=max_pixels, remedy=_INFERENCE_REMEDY)
  return prepare_grey(image, image_size, stored_size)
