"""Batched, jitted prediction: uint8 images -> class probabilities.

The same preprocessing as training and evaluation runs on the device (`to_model_input`), and every
batch has one static shape (the last is zero-padded), so a whole folder compiles once.
"""

import functools
import glob
import os
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import preprocess

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def make_predict_fn(module, variables: dict, *, dtype=jnp.float32) -> Callable:
  """fn(images uint8 (B, S, S, 1)) -> probabilities float32 (B, C), jitted.

  Args:
    module: the Flax module (`jaxcxr.models.build`).
    variables: {'params', 'batch_stats' (if any)}; other collections are dropped.
    dtype: model input dtype (`to_model_input`); the softmax is float32 whatever it is.
  """
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}

  @jax.jit
  def predict(variables, images):
    x = preprocess.to_model_input(images, dtype)
    logits = module.apply(variables, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  # Variables are an argument, not closed-over constants, so they are not baked into the HLO.
  return functools.partial(predict, variables)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def predict_arrays(predict_fn: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Probabilities of uint8 (N, S, S, 1) images in fixed-size (zero-padded) batches -> (N, C)."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(predict_fn(chunk))[:n])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_files(predict_fn: Callable, paths: Sequence[str], image_size: int,
                  batch_size: int, *, stored_size: int = 0
                  ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """Predicts image files; unreadable ones are skipped and reported.

  Args:
    predict_fn: `make_predict_fn(...)`.
    paths: image files, in output order.
    image_size: model input side.
    batch_size: static batch size (the last batch is zero-padded, so one compilation).
    stored_size: side the training data was stored at (`jaxcxr.data.builder.stored_size`), to
      reproduce its two resamples; 0 resizes once.

  Returns:
    (probs float32 (N_ok, C), ok_paths (N_ok,), failed [(path, reason)]), ok_paths in the order
    of `paths`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  ok_paths, failed, probs = [], [], []
  pending = []

  def flush():
    if pending:
      probs.append(predict_arrays(predict_fn, np.stack(pending), batch_size))
      pending.clear()

  for path in paths:
    try:
      image = preprocess.load_image_for_inference(path, image_size, stored_size=stored_size)
    except (OSError, ValueError) as e:  # ImageError is a ValueError naming the file
      failed.append((str(path), getattr(e, 'reason', None) or f'{type(e).__name__}: {e}'))
      continue
    pending.append(image)
    ok_paths.append(str(path))
    if len(pending) == batch_size:
      flush()
  flush()
  if not probs:
    return np.zeros((0, 0), np.float32), ok_paths, failed
  return np.concatenate(probs).astype(np.float32), ok_paths, failed


def list_images(spec: str) -> list[str]:
  """Image files of a folder (recursive, sorted), a glob pattern, or one file."""
  if os.path.isdir(spec):
    found = []
    for root, _, files in os.walk(spec):
      found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)
  if os.path.isfile(spec):
    return [spec]
  return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
