"""Grad-CAM and Grad-CAM++ from one batched forward + backward pass (`jax.grad`).

Every model marks its last convolutional feature map as 'cam_features' and the outputs of its
earlier stages as 'cam_stage_<stage>' (docs/ARCHITECTURE.md): `perturb` adds
`variables['perturbations'][name]` to a map A (B, h, w, K), so the gradient of a score w.r.t. a
zero perturbation is the gradient w.r.t. A, and `sow` returns A itself.

Which map (`layer`): 'auto' (the default) takes the deepest marked map that is at least
`MIN_CAM_SIDE` (7) cells a side at the input size, so the map is never coarser than 7x7 where the
model has such a stage (the recipe's `cnn_res18_half` at 112 px: layer3, 7x7, instead of its 4x4
last stage; ResNets at 224 px and the default `cnn_bn` at 64 px keep their last stage, 7x7 / 8x8).
'last' is the last stage ('cam_features', the maps before issue #30), a stage name ('layer3') one
stage, and 'a+b' averages the min-max-normalised maps of several layers after upsampling.
docs/RESULTS.md has the phantom localisation at each resolution that chose 'auto'.
The score is the sum over the batch of each image's target-class logit y^c, so one `jax.grad` call
gives every image's dy^c/dA. Only the head after A is differentiated (the parameters are not), so a
Grad-CAM batch costs little more than the forward pass (`launch.benchmark` times both).

- Grad-CAM (Selvaraju et al. 2017): weights a_k = mean_ij dy/dA_ijk; map relu(sum_k a_k A_k).
- Grad-CAM++ (Chattopadhay et al. 2018, closed form for the score exp(y^c)):
  alpha_ijk = g^2 / (2 g^2 + sum_ab A_abk g^3) with g = dy/dA_ijk (alpha = 0 where g = 0),
  a_k = sum_ij alpha_ijk relu(g_ijk). (The exp(y) factor of the gradients of exp(y) is one positive
  number per image and cancels in the [0, 1] normalisation.)

Maps are resized to the input size (bilinear) and min-max normalised to [0, 1] per image.
Sanity checks: `pointing_game` (localisation) and `rank_correlation` for the model-randomisation
test of Adebayo et al. 2018 (`randomisation_check`).
"""

import csv
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxcxr import data
from jaxcxr.data import dataset, loader, phantom, preprocess
from jaxcxr.data import images as images_lib
from jaxcxr.evaluation import inference, plots
from jaxcxr.training import checkpoint

METHODS = ('gradcam', 'gradcam++')
CAM_NAME = 'cam_features'  # the last stage (also the OOD score's features: jaxcxr.evaluation.ood)
STAGE_PREFIX = 'cam_stage_'
MIN_CAM_SIDE = 7  # 'auto': the deepest map with at least this many cells a side


def _model_variables(variables: dict) -> dict:
  """params / batch_stats only (a `perturbations` or `intermediates` entry would be stale)."""
  return {k: v for k, v in variables.items() if k not in ('perturbations', 'intermediates')}


def _feature_map(module, variables: dict, x: jnp.ndarray, name: str = CAM_NAME) -> jnp.ndarray:
  _, state = module.apply(variables, x, train=False, mutable=['intermediates'])
  return state['intermediates'][name][0]


@functools.lru_cache(maxsize=64)
def _marked_shapes(module, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """{mark name: (B, h, w, K)} of every map `module` marks for an input of `shape` (traced once)."""
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  variables = jax.eval_shape(
    lambda x: module.init(keys, x, train=False), jax.ShapeDtypeStruct(shape, jnp.float32)
  )
  return {k: tuple(v.shape) for k, v in variables.get('perturbations', {}).items()}


def _display(name: str) -> str:
  return 'last' if name == CAM_NAME else name.removeprefix(STAGE_PREFIX)


def resolve_layers(module, shape: Sequence[int], layer: str = 'auto') -> tuple[str, ...]:
  """The mark names `layer` means for `module` at input `shape` (B, H, W, C).

  Args:
    module: a model marking 'cam_features' (and 'cam_stage_*' for earlier stages).
    shape: the model input's shape.
    layer: 'auto' (the deepest map of at least MIN_CAM_SIDE cells a side, the last stage on a
      tie; the largest map when none is that fine), 'last', a stage name such as 'layer3', or
      several joined by '+' (their maps averaged).

  Raises:
    ValueError: a name the model does not mark (the message lists the ones it does).
  """
  marks = _marked_shapes(module, tuple(int(d) for d in shape))
  if not marks:
    raise ValueError(f'{type(module).__name__} marks no Grad-CAM feature map ({CAM_NAME!r}).')
  out = []
  for part in layer.split('+'):
    part = part.strip()
    if part == 'auto':
      side = {k: min(v[1:3]) for k, v in marks.items()}
      fine = [k for k in marks if side[k] >= MIN_CAM_SIDE]
      if fine:  # the deepest = the smallest map; on a tie the last stage, else the later stage
        ties = [k for k in fine if side[k] == min(side[f] for f in fine)]
        name = CAM_NAME if CAM_NAME in ties else max(ties)
      else:
        name = max(marks, key=side.get)
    elif part in ('last', CAM_NAME):
      name = CAM_NAME
    else:
      name = part if part.startswith(STAGE_PREFIX) else STAGE_PREFIX + part
    if name not in marks:
      known = ', '.join(['auto', 'last'] + sorted(_display(k) for k in marks if k != CAM_NAME))
      raise ValueError(
        f'Grad-CAM layer {part!r} is not marked by {type(module).__name__}; choose from: {known} '
        "(or several joined by '+')."
      )
    if name not in out:
      out.append(name)
  return tuple(out)


def map_side(module, shape: Sequence[int], layer: str = 'auto') -> int:
  """Cells a side of the finest map `layer` uses (the shorter side): what the indicator judges."""
  marks = _marked_shapes(module, tuple(int(d) for d in shape))
  return max(min(marks[n][1:3]) for n in resolve_layers(module, shape, layer))


def describe_layers(module, shape: Sequence[int], layer: str = 'auto') -> str:
  """Human-readable map size, e.g. 'layer3, 7x7 at 112 px' (what reports and launchers print)."""
  marks = _marked_shapes(module, tuple(int(d) for d in shape))
  parts = [
    f'{_display(n)} {marks[n][1]}x{marks[n][2]}' for n in resolve_layers(module, shape, layer)
  ]
  return f'{" + ".join(parts)} at {shape[1]} px'


def _weights(method: str, fmap: jnp.ndarray, grads: jnp.ndarray) -> jnp.ndarray:
  """(B, h, w, K) feature map and dy/dA -> (B, K) channel weights."""
  if method == 'gradcam':
    return grads.mean(axis=(1, 2))
  g2 = grads * grads
  g3 = g2 * grads
  denom = 2 * g2 + fmap.sum(axis=(1, 2), keepdims=True) * g3
  alpha = jnp.where((grads != 0) & (denom != 0), g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
  return (alpha * jax.nn.relu(grads)).sum(axis=(1, 2))


def _normalise(maps: jnp.ndarray) -> jnp.ndarray:
  """Per-map min-max to [0, 1]; a constant map becomes 0."""
  lo = maps.min(axis=(1, 2), keepdims=True)
  span = maps.max(axis=(1, 2), keepdims=True) - lo
  return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=('module', 'method', 'names'))
def _cam_batch(
  module, variables: dict, x: jnp.ndarray, target: jnp.ndarray, method: str, names: tuple
) -> dict:
  _, state_shape = jax.eval_shape(
    lambda v, x: module.apply(v, x, train=False, mutable=['intermediates']), variables, x
  )
  # Every marked map needs a perturbation (flax refuses a partial collection); only `names` are
  # differentiated.
  zeros = {k: jnp.zeros(v[0].shape, v[0].dtype) for k, v in state_shape['intermediates'].items()}

  def score(chosen_perturbations):
    v = {**variables, 'perturbations': {**zeros, **chosen_perturbations}}
    logits, state = module.apply(v, x, train=False, mutable=['intermediates'])
    logits = logits.astype(jnp.float32)
    chosen = jnp.where(target < 0, jnp.argmax(logits, axis=-1), target)
    total = jnp.take_along_axis(logits, chosen[:, None], axis=1).sum()
    return total, ({n: state['intermediates'][n][0] for n in names}, logits, chosen)

  grads, (fmaps, logits, chosen) = jax.grad(score, has_aux=True)({n: zeros[n] for n in names})
  b, height, width = x.shape[0], x.shape[1], x.shape[2]
  raws, weights = [], []
  for n in names:
    w = _weights(method, fmaps[n].astype(jnp.float32), grads[n].astype(jnp.float32))
    weights.append(w)
    raws.append(jax.nn.relu(jnp.einsum('bhwk,bk->bhw', fmaps[n].astype(jnp.float32), w)))
  if len(raws) == 1:
    raw = raws[0]
  else:  # several layers: each normalised map upsampled to the finest one's grid, averaged
    fine = max(r.shape[1] * r.shape[2] for r in raws)
    hw = next(r.shape[1:] for r in raws if r.shape[1] * r.shape[2] == fine)
    raw = jnp.mean(
      jnp.stack([_normalise(jax.image.resize(r, (b, *hw), method='bilinear')) for r in raws]), 0
    )
  cam = _normalise(jax.image.resize(raw, (b, height, width), method='bilinear'))
  return {
    'cam': cam,
    'raw': raw,
    'weights': jnp.concatenate(weights, axis=-1),
    'logits': logits,
    'probs': jax.nn.softmax(logits, axis=-1),
    'target': chosen,
  }


def grad_cam(
  module,
  variables: dict,
  x: jnp.ndarray,
  target=None,
  *,
  method: str = 'gradcam',
  layer: str = 'auto',
) -> dict:
  """Grad-CAM / Grad-CAM++ maps of a batch (jitted; one forward + backward).

  Args:
    module: a `jaxcxr.models` module (marks 'cam_features').
    variables: {'params', 'batch_stats' (if any)}.
    x: (B, H, W, 3) float model input (ImageNet-normalised, see `to_model_input`).
    target: None (each image's predicted class), an int (one class for all) or (B,) ints;
      -1 entries mean "predicted".
    method: 'gradcam' or 'gradcam++'.
    layer: the feature map(s) explained: 'auto', 'last', a stage or 'a+b' (`resolve_layers`).

  Returns:
    {'cam': (B, H, W) in [0, 1], 'raw': (B, h, w) un-normalised map at feature resolution
     (several layers: the mean of their normalised maps on the finest grid), 'weights': (B, K)
     channel weights (several layers: concatenated), 'logits': (B, C), 'probs': (B, C),
     'target': (B,) class explained}.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown Grad-CAM method {method!r}; choose one of {METHODS}.')
  x = jnp.asarray(x)
  names = resolve_layers(module, x.shape, layer)
  if target is None:
    target = -1
  target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (x.shape[0],))
  return _cam_batch(module, _model_variables(variables), x, target, method, names)


def overlay(
  gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = 'jet'
) -> np.ndarray:
  """Heat map over a grey image.

  Args:
    gray: (H, W) uint8 image.
    cam: (h, w) map in [0, 1]; resized (bilinear) to (H, W) when its size differs.
    alpha: weight of the heat map (0: image only, 1: heat map only).
    colormap: matplotlib colormap name.

  Returns:
    (H, W, 3) uint8 RGB.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  gray = np.asarray(gray)
  if gray.ndim == 3 and gray.shape[-1] == 1:
    gray = gray[..., 0]
  cam = np.asarray(cam, np.float32)
  if cam.shape != gray.shape:
    cam = np.asarray(
      Image.fromarray(cam, mode='F').resize((gray.shape[1], gray.shape[0]), Image.BILINEAR)
    )
  heat = matplotlib.colormaps[colormap](np.clip(cam, 0.0, 1.0))[..., :3]
  base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=-1)
  out = (1.0 - alpha) * base + alpha * heat
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


MIN_PANEL_SIDE = 200  # smaller sources are enlarged by an integer factor (nearest) to stay legible


def probability_header(
  probs: np.ndarray, class_names: Sequence[str], *, true: int | None = None, name: str = ''
) -> list[str]:
  """Header lines of a panel: [name], true and predicted class, and every class probability."""
  probs = np.asarray(probs)
  pred = int(probs.argmax())
  lines = [name] if name else []
  verdict = '' if true is None else (' (correct)' if pred == true else ' (WRONG)')
  head = f'pred {class_names[pred]} p={probs[pred]:.3f}{verdict}'
  lines.append(head if true is None else f'true {class_names[true]}; {head}')
  lines.append('  '.join(f'{c}: {p:.3f}' for c, p in zip(class_names, probs, strict=True)))
  return lines


def source_panel(
  original: np.ndarray, cam: np.ndarray, header: Sequence[str], *, alpha: float = 0.4
) -> np.ndarray:
  """The source image beside its Grad-CAM overlay, at the source's resolution, under a header.

  Args:
    original: uint8 (H, W) grey image at its source resolution (not the model's input size).
    cam: (h, w) map in [0, 1] at any size; resized (bilinear) to (H, W).
    header: text lines drawn above (e.g. `probability_header`).
    alpha: overlay weight.

  Returns:
    uint8 RGB (header + H * f, 2 * W * f, 3), f = ceil(MIN_PANEL_SIDE / W) (1 for W >= 200): a
    small source is enlarged by an integer factor (nearest neighbour, pixels kept) to stay legible.
  """
  original = np.asarray(original)
  if original.ndim == 3:
    original = original[..., 0]
  pair = np.concatenate([np.repeat(original[..., None], 3, -1), overlay(original, cam, alpha)], 1)
  f = max(1, -(-MIN_PANEL_SIDE // original.shape[1]))
  if f > 1:
    pair = pair.repeat(f, 0).repeat(f, 1)
  width = pair.shape[1]
  size = max(11, width // 40)
  font = ImageFont.load_default(size=size)
  canvas = Image.new('RGB', (width, (size + 4) * len(header) + 6), 'white')
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(header):
    draw.text((4, 3 + i * (size + 4)), line, fill='black', font=font)
  return np.concatenate([np.asarray(canvas), pair], 0)


def save_overlay_grid(
  path: str,
  grays: np.ndarray,
  cams: np.ndarray,
  labels: Sequence[int],
  preds: Sequence[int],
  class_names: Sequence[str],
  *,
  probs: np.ndarray | None = None,
  per_class: int = 2,
  alpha: float = 0.4,
  title: str = 'Grad-CAM',
) -> dict:
  """One row per true class: up to `per_class` correct then up to `per_class` wrong predictions.

  Args:
    path: PNG to write.
    grays: (N, H, W) uint8 images (or (N, H, W, 1)).
    cams: (N, H, W) maps in [0, 1].
    labels, preds: (N,) true and predicted class indices.
    class_names: names by index.
    probs: optional (N, C) probabilities for the titles.
    per_class: examples of each kind per row.
    alpha: overlay weight.
    title: figure title.

  Returns:
    {class name: {'correct': [indices], 'wrong': [indices]}} of the images shown.
  """
  labels = np.asarray(labels)
  preds = np.asarray(preds)
  chosen, images, titles, row_labels = {}, [], [], []
  ncols = 2 * per_class
  for k, name in enumerate(class_names):
    right = np.flatnonzero((labels == k) & (preds == k))[:per_class].tolist()
    wrong = np.flatnonzero((labels == k) & (preds != k))[:per_class].tolist()
    chosen[name] = {'correct': right, 'wrong': wrong}
    if not right and not wrong:
      continue
    row_labels.append(f'true: {name}')
    slots = right + [None] * (per_class - len(right)) + wrong + [None] * (per_class - len(wrong))
    for i, idx in enumerate(slots):
      if idx is None:
        images.append(None)
        titles.append('(no correct prediction)' if i < per_class else '(no wrong prediction)')
        continue
      images.append(overlay(grays[idx], cams[idx], alpha))
      p = f' p={float(probs[idx, preds[idx]]):.2f}' if probs is not None else ''
      mark = 'correct' if i < per_class else 'WRONG'
      titles.append(f'{mark}: pred {class_names[preds[idx]]}{p}')
  if not images:
    raise ValueError('save_overlay_grid: no images to show.')
  plots.image_grid(images, titles, path, suptitle=title, row_labels=row_labels, ncols=ncols)
  return chosen


def pointing_game(cams: np.ndarray, masks: np.ndarray) -> float:
  """Fraction of maps whose maximum falls inside the mask (images with empty masks ignored).

  Args:
    cams: (N, H, W) maps.
    masks: (N, H, W) bool (e.g. the lesion or lung region).

  Returns:
    Hit rate in [0, 1]; NaN when every mask is empty.
  """
  cams = np.asarray(cams)
  masks = np.asarray(masks, bool)
  n = cams.shape[0]
  peak = cams.reshape(n, -1).argmax(axis=1)
  flat = masks.reshape(n, -1)
  valid = flat.any(axis=1)
  if not valid.any():
    return float('nan')
  hits = flat[np.arange(n), peak]
  return float(hits[valid].mean())


def energy_in_mask(cams: np.ndarray, masks: np.ndarray) -> float:
  """Mean share of each map's mass inside its mask (images with empty masks or maps ignored).

  The energy-based pointing game (Wang et al., Score-CAM, 2020): where the pointing game asks
  whether the peak lies on the lesion, this asks how much of the evidence does.

  Args:
    cams: (N, H, W) non-negative maps.
    masks: (N, H, W) bool.

  Returns:
    Mean share in [0, 1]; NaN when no image has both a mask and a non-zero map.
  """
  cams = np.asarray(cams, np.float64)
  masks = np.asarray(masks, bool)
  n = cams.shape[0]
  total = cams.reshape(n, -1).sum(1)
  inside = (cams * masks).reshape(n, -1).sum(1)
  valid = masks.reshape(n, -1).any(1) & (total > 0)
  if not valid.any():
    return float('nan')
  return float(np.mean(inside[valid] / total[valid]))


def rank_correlation(cams_a: np.ndarray, cams_b: np.ndarray) -> float:
  """Mean over images of the Spearman rank correlation of two maps (constant maps skipped)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  cams_a = np.asarray(cams_a)
  cams_b = np.asarray(cams_b)
  rhos = []
  for a, b in zip(cams_a.reshape(len(cams_a), -1), cams_b.reshape(len(cams_b), -1), strict=True):
    if np.ptp(a) == 0 or np.ptp(b) == 0:
      continue  # rank correlation undefined
    rhos.append(stats.spearmanr(a, b).statistic)
  return float(np.mean(rhos)) if rhos else float('nan')


def randomisation_check(
  module,
  variables: dict,
  x: jnp.ndarray,
  key: jax.Array,
  *,
  method: str = 'gradcam',
  target=None,
  layer: str = 'auto',
) -> float:
  """Model-randomisation test (Adebayo et al. 2018): all weights re-initialised.

  A faithful saliency method gives maps that change when the weights are randomised, so the
  returned mean Spearman correlation between the trained and the random model's maps (same
  target classes) should be low.
  """
  trained = grad_cam(module, variables, x, target, method=method, layer=layer)
  random_vars = module.init({'params': key, 'dropout': key}, x[:1], train=False)
  random = grad_cam(module, random_vars, x, trained['target'], method=method, layer=layer)
  return rank_correlation(np.asarray(trained['cam']), np.asarray(random['cam']))


# uint8 (B, S, S, 1) -> float32 model input, on the device.
_to_model_input = jax.jit(preprocess.to_model_input, static_argnames='dtype')


def _target_index(target: str, class_names) -> int:
  if not target:
    return -1
  if target.isdigit() and int(target) < len(class_names):
    return int(target)
  if target in class_names:
    return list(class_names).index(target)
  raise ValueError(
    f'--target={target!r} is not a class of this model: {list(class_names)} (or their indices).'
  )


def cams_uint8(
  module,
  variables: dict,
  images: np.ndarray,
  target=-1,
  *,
  method: str = 'gradcam',
  batch_size: int = 16,
  layer: str = 'auto',
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Maps of uint8 (N, S, S, 1) images in fixed-size (zero-padded) batches: one compilation.

  Args:
    module, variables: the model.
    images: uint8 (N, S, S, 1), preprocessed on the device with `to_model_input`.
    target: one class index for all, or (N,) indices; -1 = the predicted class.
    method: 'gradcam' or 'gradcam++'.
    batch_size: static batch size.
    layer: the feature map(s) explained (`resolve_layers`).

  Returns:
    (cams (N, S, S) in [0, 1], probs (N, C), targets (N,)).
  """
  target = np.broadcast_to(np.asarray(target, np.int32), (len(images),))
  cams, probs, targets = [], [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    chunk_target = target[start : start + batch_size]
    n = len(chunk)
    if n < batch_size:  # static shape: one compilation
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      chunk_target = np.concatenate([chunk_target, np.full(batch_size - n, -1, np.int32)])
    out = grad_cam(
      module,
      variables,
      _to_model_input(jnp.asarray(chunk)),
      chunk_target,
      method=method,
      layer=layer,
    )
    cams.append(np.asarray(out['cam'])[:n])
    probs.append(np.asarray(out['probs'])[:n])
    targets.append(np.asarray(out['target'])[:n])
  return np.concatenate(cams), np.concatenate(probs), np.concatenate(targets)


def explain_workdir(
  workdir: str,
  out: str,
  *,
  images: Sequence[str] = (),
  split: str = '',
  method: str = 'gradcam',
  target: str = '',
  alpha: float = 0.4,
  per_class: int = 3,
  which: str = 'best',
  batch_size: int = 16,
  layer: str = 'auto',
) -> dict:
  """Grad-CAM overlays for a training workdir's model (launch.gradcam).

  images: one `<name>_<method>.png` per readable file in `out` (the file at its own resolution
  beside its Grad-CAM overlay, under the class probabilities), and cams.csv (file, overlay,
  predicted_label, target_label, target_probability). split: a per-class grid of correct and
  wrong predictions (explaining the prediction, at the model's input size), the same examples as
  source-resolution panels (`<split>_<class>_<correct|wrong>_<k>_<method>.png`), and for phantom
  data the pointing-game hit rate of the true-class maps against the lesion masks and the share of
  their mass inside them.

  Args:
    workdir: training workdir.
    out: output folder.
    images: files, folders or globs; exclusive with `split`.
    split: a prepared split of the workdir's data config.
    method: 'gradcam' or 'gradcam++'.
    target: class name or index to explain; '' = the predicted class.
    alpha: overlay opacity.
    per_class: split grid: examples of each kind per class.
    which: 'best' or 'latest' checkpoint.
    batch_size: Grad-CAM batch size.
    layer: the feature map(s) explained (`resolve_layers`; 'auto': at least 7x7).

  Returns:
    {'written': [paths], 'failed': [(path, reason)], 'method', 'cam_map' (e.g. 'layer3 7x7 at
     112 px'), and for a split 'shown', 'pointing_game', 'energy_in_mask',
     'pointing_game_images'}.
  """
  if bool(images) == bool(split):
    raise ValueError('Give either --images (files, folders or globs) or --split, not both.')
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  target_index = _target_index(target, bundle.class_names)
  size = bundle.image_size
  result = {
    'written': [],
    'failed': [],
    'method': method,
    'cam_map': describe_layers(bundle.module, (batch_size, size, size, 3), layer),
  }
  os.makedirs(out, exist_ok=True)
  options = {'method': method, 'batch_size': batch_size, 'layer': layer}
  if split:
    _explain_split(bundle, split, out, target_index, alpha, per_class, options, result)
  else:
    _explain_files(bundle, images, out, target_index, alpha, options, result)
  return result


def split_images(
  data_cfg, handle, split: str, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A whole split as the model sees it: (uint8 (N, S, S, 1), labels (N,), record indices (N,))."""
  greys, labels, index = [], [], []
  for batch in loader.eval_iterator(data_cfg, handle, split, local_batch_size=batch_size):
    valid = np.asarray(batch['valid'], bool)
    greys.append(np.asarray(batch['image'])[valid])
    labels.append(np.asarray(batch['label'])[valid])
    index.append(np.asarray(batch['index'])[valid])
  return tuple(map(np.concatenate, (greys, labels, index)))


def load_source(handle, data_cfg, split: str, index: int) -> tuple[np.ndarray, str]:
  """Record `index` of `split` as its original file at the file's resolution (uint8 grey).

  Returns (image, its relative file name). When the source folder is not readable any more, the
  stored record is returned instead and the name says so.
  """
  name = handle.filenames(split)[index]
  root = handle.phantom_dir or data_cfg.manual_dir
  if root:
    try:
      return images_lib.load_grey(os.path.join(os.path.expanduser(root), name)), name
    except (OSError, ValueError):
      pass
  return (
    np.asarray(handle.source(split)[index]['image']),
    f'{name} (stored {handle.stored_size} px copy: source file not found)',
  )


def _explain_split(bundle, split, out, target_index, alpha, per_class, options, result) -> None:
  """A per-class grid of right and wrong predictions of a split; localisation on phantoms."""
  method = options['method']
  names, size, suffix = list(bundle.class_names), bundle.image_size, method.replace('+', 'p')
  handle = data.prepare(bundle.config.data)
  greys, labels, index = split_images(bundle.config.data, handle, split, options['batch_size'])
  cams, probs, _ = cams_uint8(bundle.module, bundle.variables, greys, target_index, **options)
  preds = probs.argmax(1)
  path = os.path.join(out, f'grid_{split}_{suffix}.png')
  result['shown'] = save_overlay_grid(
    path,
    greys[..., 0],
    cams,
    labels,
    preds,
    names,
    probs=probs,
    per_class=per_class,
    alpha=alpha,
    title=f'{method}, {result["cam_map"]} ({split}, step {bundle.step}): rows = true class',
  )
  result['written'].append(path)
  for name, kinds in result['shown'].items():
    for kind, positions in kinds.items():
      for k, pos in enumerate(positions, 1):
        original, note = load_source(handle, bundle.config.data, split, int(index[pos]))
        header = probability_header(probs[pos], names, true=int(labels[pos]), name=note)
        panel_path = os.path.join(out, f'{split}_{name.replace(" ", "_")}_{kind}_{k}_{suffix}.png')
        Image.fromarray(source_panel(original, cams[pos], header, alpha=alpha)).save(panel_path)
        result['written'].append(panel_path)
  if handle.phantom_dir:  # synthetic data: lesion masks make localisation measurable
    filenames = handle.filenames(split)
    masks = np.stack(
      [phantom.load_lesion_mask(handle.phantom_dir, filenames[i], size) for i in index]
    )
    # Pointing game explains the true class: recompute the maps where the prediction differs.
    true_cams = cams.copy()
    redo = np.flatnonzero((preds != labels) & masks.reshape(len(masks), -1).any(1))
    if target_index < 0 and redo.size:
      true_cams[redo] = cams_uint8(
        bundle.module, bundle.variables, greys[redo], labels[redo], **options
      )[0]
    result['pointing_game'] = pointing_game(true_cams, masks)
    result['energy_in_mask'] = energy_in_mask(true_cams, masks)
    result['pointing_game_images'] = int(masks.reshape(len(masks), -1).any(1).sum())


def _explain_files(bundle, images, out, target_index, alpha, options, result) -> None:
  """One overlay per readable image file and cams.csv."""
  method = options['method']
  names, size, suffix = list(bundle.class_names), bundle.image_size, method.replace('+', 'p')
  paths = []
  for spec in images:
    found = inference.list_images(spec)
    if not found:
      result['failed'].append((spec, 'no image files match'))
    paths += found
  greys, ok = [], []
  for p in paths:
    try:
      greys.append(
        preprocess.load_image_for_inference(
          p, size, stored_size=dataset.stored_size(bundle.config.data)
        )
      )
      ok.append(p)
    except (OSError, ValueError) as e:
      result['failed'].append((p, getattr(e, 'reason', None) or str(e)))
  if not ok:
    return
  greys = np.stack(greys)
  cams, probs, targets = cams_uint8(bundle.module, bundle.variables, greys, target_index, **options)
  used = set()
  with open(os.path.join(out, 'cams.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['file', 'overlay', 'predicted_label', 'target_label', 'target_probability'])
    for i, p in enumerate(ok):
      stem = os.path.splitext(os.path.basename(p))[0]
      name = f'{stem}_{suffix}.png'
      k = 1
      while name in used:  # same file name in different folders
        k += 1
        name = f'{stem}_{k}_{suffix}.png'
      used.add(name)
      original = images_lib.load_grey(p)  # readable: it was just loaded above
      header = probability_header(probs[i], names, name=os.path.basename(p))
      if targets[i] != probs[i].argmax():
        header.append(f'Grad-CAM of {names[targets[i]]}')
      Image.fromarray(source_panel(original, cams[i], header, alpha=alpha)).save(
        os.path.join(out, name)
      )
      result['written'].append(os.path.join(out, name))
      writer.writerow(
        [p, name, names[probs[i].argmax()], names[targets[i]], f'{probs[i, targets[i]]:.6f}']
      )


__all__ = [
  'METHODS',
  'MIN_CAM_SIDE',
  'cams_uint8',
  'describe_layers',
  'energy_in_mask',
  'explain_workdir',
  'grad_cam',
  'load_source',
  'map_side',
  'overlay',
  'pointing_game',
  'probability_header',
  'randomisation_check',
  'rank_correlation',
  'resolve_layers',
  'save_overlay_grid',
  'source_panel',
  'split_images',
]
