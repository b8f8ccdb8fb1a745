"""Mixup and CutMix on a global batch, inside the jitted train step (`config.train.mixup_alpha`,
`config.train.cutmix_alpha`).

timm's semantics, batch mode: every example is mixed with the example at the mirrored position of
the batch (`x[::-1]`), with one mixing ratio `lam` per batch drawn from Beta(alpha, alpha). Mixup
blends the two images, `lam * x + (1 - lam) * x[::-1]`; CutMix pastes a box of the mirrored image
whose area is about `1 - lam` of the image (centre uniform, box clipped at the border, `lam` then
recomputed from the clipped area). With both alphas > 0 each batch uses one of the two, 50 / 50.
Targets (and per-example loss weights) are mixed with the same `lam`.
"""

import jax
import jax.numpy as jnp


def cutmix_mask(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
  """(H, W) bool, True inside a box of area ~ (1 - lam) H W with a uniform centre (clipped)."""
  ky, kx = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  cy = jax.random.uniform(ky, (), minval=0.0, maxval=height)
  cx = jax.random.uniform(kx, (), minval=0.0, maxval=width)
  y0 = jnp.clip(jnp.round(cy - cut * height / 2), 0, height)
  y1 = jnp.clip(jnp.round(cy + cut * height / 2), 0, height)
  x0 = jnp.clip(jnp.round(cx - cut * width / 2), 0, width)
  x1 = jnp.clip(jnp.round(cx + cut * width / 2), 0, width)
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def blend(values: jax.Array, lam: jax.Array | None) -> jax.Array:
  """`lam * v + (1 - lam) * v[::-1]` along the batch axis (in float32); `values` when lam is
  None."""
  if lam is None:
    return values
  v = values.astype(jnp.float32)
  return (lam * v + (1.0 - lam) * v[::-1]).astype(values.dtype)


def mix(
  key: jax.Array, images: jax.Array, *, mixup_alpha: float, cutmix_alpha: float
) -> tuple[jax.Array, jax.Array | None]:
  """(mixed images, lam): images (B, H, W, C) mixed with `images[::-1]`.

  The caller mixes its targets with `blend(targets, lam)`. With both alphas 0 the images are
  returned as they are and lam is None (nothing to mix: the step traces no mixing at all).
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, None
  k_choice, k_mixup, k_cutmix, k_box = jax.random.split(key, 4)
  other = images[::-1]
  candidates = []
  if mixup_alpha > 0:
    lam = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha)
    candidates.append((blend(images, lam), lam))
  if cutmix_alpha > 0:
    lam = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha)
    h, w = images.shape[1:3]
    box = cutmix_mask(k_box, lam, h, w)
    pasted = jnp.where(box[None, :, :, None], other, images)
    candidates.append((pasted, 1.0 - jnp.mean(box.astype(jnp.float32))))
  if len(candidates) == 1:
    return candidates[0]
  use_cutmix = jax.random.bernoulli(k_choice)
  (m_images, m_lam), (c_images, c_lam) = candidates
  return (jnp.where(use_cutmix, c_images, m_images), jnp.where(use_cutmix, c_lam, m_lam))
