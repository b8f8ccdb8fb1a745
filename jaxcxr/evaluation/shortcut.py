"""Shortcut indicator: how much of a model's Grad-CAM evidence lies outside the lungs.

Chest X-ray sets are confounded (in the Kaggle set every viral-pneumonia film is a child's from one
hospital; COVID films carry burned-in text and markers), so a high score can come from the wrong
evidence. For every image we measure, on its Grad-CAM map of the predicted class (non-negative,
at the model's input size):

- `corners`: the share of the map's mass in the four corner squares (side `CORNER_FRACTION` of
  the image side: 36% of the area at 0.3), where markers, labels and burned-in text sit and no
  lung does;
- `border`: the share in the border frame (the outer `FRAME_FRACTION` of each side);
- `outside_lung`: the share outside the lung mask of `lung_mask`;
- `peak_outside_lung`: whether the map's maximum lies outside the lung mask.

Per predicted class, the means are shown beside what a uniform map would give (the areas). A
class is FLAGGED when
- its evidence is concentrated in the corners: mean corner share > `CORNER_FLAG` x the corners'
  area share (the map puts 1.5x more mass per pixel there than a uniform map would), or
- its evidence is off the lungs almost always: the map's peak lies outside the lung mask on
  >= `PEAK_FLAG` (90%) of the class's images *and* the class's mean mass outside the mask exceeds
  the area outside it.
Calibration (issue #30, docs/RESULTS.md; `launch.benchmark_cam` on phantom test splits of 240
/ 180 films, seed 0): for the recipe's `cnn_res18_half` at 112 px the 7x7 map of layer3 (Grad-CAM's
'auto') separates the model trained with a corner marker on every COVID film from the clean one:
the marker model is flagged (its Normal maps put 0.95 of their mass in the corners, 2.6x the
area, where the marker's absence is read; its non-empty COVID maps, 30 of 80, all peak off the
lungs), the clean model is not (corners <= 0.62x, peaks off the lungs <= 73 %). Its last stage,
4x4, cannot: there
the clean model's COVID maps put more mass in the corners (1.11x) than the marker model's (0.86x)
and peak off the lungs on 100 % of its images against 29 %, so both rules would point the wrong
way; 14x14 (layer2) and layer3 + last averaged flag neither or the clean one. Below
`MIN_JUDGE_SIDE` (7 cells a side) the indicator therefore says "too coarse to judge" and flags
nothing. The default `cnn_bn` at 64 px keeps its 8x8 last stage: marker model 1.55x corners
(flagged), clean models <= 0.59x (the suite's smaller variant: 0.62 of the COVID mass in the
corners, 1.77x, against at most 0.34, tests/test_learning.py). The off-lung rule is conservative on
purpose: the intensity heuristic misses dense consolidations (they look like soft tissue), so
evidence on a real opacity can fall "outside" it (clean phantom models at the new resolution: the
peak outside the mask on 11-73 % of a class's images). On real films (docs/RESULTS.md, cxr_eval) the
`configs/cxr_cpu.py` models, read at 7x7, peak outside the lungs on most films they call COVID.

The lung mask is an intensity heuristic, no segmentation model: lungs are the dark regions inside
a generous two-ellipse envelope of where lungs sit on a PA film (`lung_envelope`). On a 64 px copy
(area-resized, blurred), pixels of the envelope darker than its Otsu threshold are lung, minus the
air outside the body (very dark regions connected to the image edge, dilated); after a 3x3 opening
only components of >= 1% of the image are kept. When that leaves < 4% or > 50% of the image
(over-/under-exposed films), the envelope minus the outside air is used instead. Against the
phantoms' true lung geometry it reaches IoU ~0.8 (tests/test_shortcut.py); on real films it follows
the lung fields of adults and children, missing parts of consolidated lungs (dense lung looks like
soft tissue), which makes the indicator conservative for evidence on opacities near the lung edge.
"""

import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from jaxcxr.evaluation import gradcam

EXAMPLES_PER_CLASS = 2  # most confident right and wrong predictions drawn per predicted class
CORNER_FRACTION = 0.3  # corner squares: 0.3 x 0.3 of the image each (36% of the area together)
CORNER_FLAG = 1.5  # flag: mean corner share > 1.5 x the corners' area share
MIN_JUDGE_SIDE = 7  # maps coarser than 7x7 cannot tell lung from border: see the module docstring
PEAK_FLAG = 0.9  # flag: peak outside the lungs on >= 90% of the class's images (and more
# mass outside them than a uniform map)
FRAME_FRACTION = 0.1  # border frame: the outer 10% of each side (36% of the area)
_WORK = 64  # side the lung heuristic works at
_MIN_LUNG, _MAX_LUNG = 0.04, 0.5


def lung_envelope(size: int) -> np.ndarray:
  """bool (size, size): two ellipses covering where the lungs of a PA chest film usually are."""
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
  env = np.zeros((size, size), bool)
  for cx in (0.29, 0.71):
    env |= ((xx - cx) / 0.2) ** 2 + ((yy - 0.47) / 0.36) ** 2 <= 1.0
  return env


def lung_mask(grey: np.ndarray) -> np.ndarray:
  """bool (H, W) lung mask of a uint8 grey chest film (H, W) or (H, W, 1); see the docstring."""
  grey = np.asarray(grey)
  if grey.ndim == 3:
    grey = grey[..., 0]
  h, w = grey.shape
  g = cv2.resize(grey.astype(np.uint8), (_WORK, _WORK), interpolation=cv2.INTER_AREA)
  g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 1.0)
  env = lung_envelope(_WORK)
  t, _ = cv2.threshold(
    np.clip(g[env], 0, 255).astype(np.uint8)[:, None], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
  )
  # Air outside the body: much darker than the lungs and connected to the image edge.
  n, lab = cv2.connectedComponents((g < 0.6 * t).astype(np.uint8), connectivity=4)
  edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
  air = np.isin(lab, edge[edge > 0])
  air = cv2.dilate(air.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
  m = cv2.morphologyEx(
    ((g < t) & env & ~air).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)
  )
  n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=4)
  big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 0.01 * _WORK * _WORK]
  mask = np.isin(lab, big)
  if not _MIN_LUNG <= mask.mean() <= _MAX_LUNG:
    mask = env & ~air
  return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def border_frame(height: int, width: int, fraction: float = FRAME_FRACTION) -> np.ndarray:
  """bool (height, width): True in the outer `fraction` of each side."""
  fy, fx = max(1, round(height * fraction)), max(1, round(width * fraction))
  frame = np.ones((height, width), bool)
  frame[fy : height - fy, fx : width - fx] = False
  return frame


def corner_squares(height: int, width: int, fraction: float = CORNER_FRACTION) -> np.ndarray:
  """bool (height, width): True in the four corner squares of side `fraction` of each side."""
  fy, fx = max(1, round(height * fraction)), max(1, round(width * fraction))
  corners = np.zeros((height, width), bool)
  corners[:fy, :fx] = corners[:fy, -fx:] = corners[-fy:, :fx] = corners[-fy:, -fx:] = True
  return corners


def cam_shares(
  cams: np.ndarray, lungs: np.ndarray, fraction: float = FRAME_FRACTION
) -> dict[str, np.ndarray]:
  """Per-image shares of Grad-CAM mass. cams (N, H, W) >= 0, lungs bool (N, H, W).

  Returns:
    {'corners', 'border', 'outside_lung': float (N,) mass shares (NaN for an all-zero map),
     'peak_outside_lung': bool (N,), 'corners_area', 'border_area', 'outside_lung_area':
     float (N,) area shares}.
  """
  cams = np.asarray(cams, np.float64)
  lungs = np.asarray(lungs, bool)
  if cams.shape != lungs.shape or cams.ndim != 3:
    raise ValueError(f'cams {cams.shape} and lung masks {lungs.shape} must both be (N, H, W).')
  n, h, w = cams.shape
  frame = border_frame(h, w, fraction)
  corners = corner_squares(h, w)
  total = cams.sum(axis=(1, 2))
  with np.errstate(invalid='ignore', divide='ignore'):

    def share(region):
      return (cams * region).sum(axis=(1, 2)) / total

    out = {'corners': share(corners), 'border': share(frame), 'outside_lung': share(~lungs)}
  peak = cams.reshape(n, -1).argmax(axis=1)
  out['peak_outside_lung'] = ~lungs.reshape(n, -1)[np.arange(n), peak]
  out.update(
    corners_area=np.full(n, corners.mean()),
    border_area=np.full(n, frame.mean()),
    outside_lung_area=1.0 - lungs.mean((1, 2)),
  )
  return out


def indicator(
  shares: dict[str, np.ndarray],
  preds: Sequence[int],
  class_names: Sequence[str],
  *,
  map_side: int | None = None,
) -> dict:
  """Per predicted class: mean shares, their uniform-map baselines, and whether it is flagged.

  Args:
    shares: `cam_shares(...)`.
    preds: (N,) predicted classes.
    class_names: names by index.
    map_side: cells a side of the Grad-CAM map the shares come from (`gradcam.map_side`); below
      `MIN_JUDGE_SIDE` nothing is flagged and the verdict is 'too coarse to judge'. None: unknown
      (judged).

  Returns:
    {'per_class': {name: {'n', 'n_empty' (all-zero maps), 'corners', 'corners_area', 'border',
     'border_area', 'outside_lung', 'outside_lung_area', 'peak_outside_lung', 'flagged',
     'reason'}},
     'flagged': [names], 'verdict', 'too_coarse', 'map_side', 'corner_fraction', 'corner_flag',
     'peak_flag', 'frame_fraction'}; classes never predicted have n = 0 and NaN shares.
  """
  too_coarse = map_side is not None and map_side < MIN_JUDGE_SIDE
  preds = np.asarray(preds)
  per_class, flagged = {}, []
  for k, name in enumerate(class_names):
    sel = (preds == k) & np.isfinite(shares['corners'])
    # An all-zero map (no positive evidence at this layer) has no shares: counted, not averaged.
    row = {'n': int(sel.sum()), 'n_empty': int(((preds == k) & ~sel).sum())}
    for key in (
      'corners',
      'corners_area',
      'border',
      'border_area',
      'outside_lung',
      'outside_lung_area',
      'peak_outside_lung',
    ):
      row[key] = float(np.mean(shares[key][sel])) if sel.any() else float('nan')
    reasons = []
    if sel.any() and row['corners'] > CORNER_FLAG * row['corners_area']:
      reasons.append(
        f'{row["corners"]:.0%} of the Grad-CAM mass in the corners '
        f'({row["corners_area"]:.0%} of the area)'
      )
    if sel.any() and (
      row['peak_outside_lung'] >= PEAK_FLAG and row['outside_lung'] > row['outside_lung_area']
    ):
      reasons.append(
        f'peak outside the lungs on {row["peak_outside_lung"]:.0%} of the images, '
        f'{row["outside_lung"]:.0%} of the mass outside them '
        f'({row["outside_lung_area"]:.0%} of the area)'
      )
    row['flagged'] = bool(reasons) and not too_coarse
    row['reason'] = '; '.join(reasons)
    if row['flagged']:
      flagged.append(name)
    per_class[name] = row
  if too_coarse:
    verdict = f'too coarse to judge ({map_side}x{map_side} map)'
  else:
    verdict = ('flagged: ' + ', '.join(flagged)) if flagged else 'no class flagged'
  return {
    'per_class': per_class,
    'flagged': flagged,
    'verdict': verdict,
    'too_coarse': too_coarse,
    'map_side': map_side,
    'corner_fraction': CORNER_FRACTION,
    'corner_flag': CORNER_FLAG,
    'peak_flag': PEAK_FLAG,
    'frame_fraction': FRAME_FRACTION,
  }


def markdown(ind: dict, figures: Sequence[tuple[str, str]] = (), cam_map: str = '') -> str:
  """The report section: the per-class table, the verdict, and links to the example panels."""
  lines = [
    '## Shortcut indicator (where the Grad-CAM evidence is)',
    '',
    (f'Grad-CAM map: {cam_map}. ' if cam_map else '')
    + 'Per predicted class, on the Grad-CAM map of the predicted class: the share of its mass '
    f'in the four corner squares ({ind["corner_fraction"]:.0%} of each side, where markers '
    f'and text sit), in the border frame (outer {ind["frame_fraction"]:.0%} of each side) '
    'and outside the lung mask (an intensity heuristic, see `jaxcxr.evaluation.shortcut`), '
    'each with the share a uniform map would give in brackets, and how often the peak lies '
    f'outside the lung mask. Flagged: corner share > {ind["corner_flag"]:g} x its area, '
    f'or the peak outside the lungs on >= {ind["peak_flag"]:.0%} of the '
    'images with more mass outside them than their area share.',
    '',
    '| predicted class | images | corners | border frame | outside lungs | '
    'peak outside lungs | flagged |',
    '|---|---:|---:|---:|---:|---:|---|',
  ]
  for name, r in ind['per_class'].items():
    n = f'{r["n"]} (+{r["n_empty"]} empty maps)' if r.get('n_empty') else str(r['n'])
    if not r['n']:
      lines.append(f'| {name} | {n} | n/a | n/a | n/a | n/a | |')
      continue
    lines.append(
      f'| {name} | {n} | {r["corners"]:.2f} ({r["corners_area"]:.2f}) | '
      f'{r["border"]:.2f} ({r["border_area"]:.2f}) | '
      f'{r["outside_lung"]:.2f} ({r["outside_lung_area"]:.2f}) | '
      f'{r["peak_outside_lung"]:.2f} | '
      f'{"**yes**: " + r["reason"] if r["flagged"] else "no"} |'
    )
  if ind.get('too_coarse'):
    verdict = (
      f'**Too coarse to judge**: a {ind["map_side"]}x{ind["map_side"]} map cannot tell the '
      f'lungs from the border (below {MIN_JUDGE_SIDE}x{MIN_JUDGE_SIDE}, the phantom shortcut '
      'model and the clean ones overlap); nothing is flagged.'
    )
  elif ind['flagged']:
    verdict = (
      '**Flagged: ' + ', '.join(ind['flagged']) + '.** The model may be using '
      'evidence outside the lungs (markers, text, borders) for these classes; check the '
      'examples below.'
    )
  else:
    verdict = 'No class flagged (the numbers can still show evidence below or beside the lungs).'
  lines += ['', verdict, '']
  if figures:
    lines += (
      [
        'Most confident right and wrong predictions (source resolution: original | '
        'Grad-CAM overlay):',
        '',
      ]
      + [f'![{t}]({p})' for t, p in figures]
      + ['']
    )
  return '\n'.join(lines)


def select_examples(
  labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, per_class: int
) -> list[tuple[int, str, int]]:
  """(index, 'correct' | 'wrong', rank) of the most confident right and wrong predictions.

  Per predicted class, up to `per_class` correct and `per_class` wrong predictions with the
  highest predicted probability (the confident mistakes show a shortcut best).
  """
  labels, preds = np.asarray(labels), np.asarray(preds)
  conf = np.asarray(probs)[np.arange(len(preds)), preds]
  out = []
  for k in range(np.asarray(probs).shape[1]):
    for kind, sel in (
      ('correct', (preds == k) & (labels == k)),
      ('wrong', (preds == k) & (labels != k)),
    ):
      idx = np.flatnonzero(sel)
      idx = idx[np.argsort(-conf[idx], kind='stable')][:per_class]
      out += [(int(i), kind, r + 1) for r, i in enumerate(idx)]
  return out


def analyse_split(
  module,
  variables: dict,
  data_cfg,
  handle,
  split: str,
  out_dir: str,
  class_names: Sequence[str],
  *,
  per_class: int = EXAMPLES_PER_CLASS,
  batch_size: int = 16,
  alpha: float = 0.4,
  layer: str = 'auto',
) -> dict:
  """Grad-CAM of every image of a split, the indicator, and panels of the telling examples.

  Args:
    module, variables: the model.
    data_cfg: `config.data` of the run; handle: its `jaxcxr.data.prepare` handle.
    split: the split to analyse.
    out_dir: the panels go to `out_dir/shortcut/`.
    class_names: the model's classes.
    per_class: most confident right and wrong predictions drawn per predicted class.
    batch_size: Grad-CAM batch size.
    alpha: overlay weight.
    layer: the Grad-CAM layer(s) (`gradcam.resolve_layers`; 'auto': at least 7x7).

  Returns:
    {'indicator': `indicator(...)`, 'figures': [(title, path relative to out_dir)],
     'images': N, 'cam_map': e.g. 'layer3 7x7 at 112 px'}.
  """
  greys, labels, index = gradcam.split_images(data_cfg, handle, split, batch_size)
  cams, probs, _ = gradcam.cams_uint8(
    module, variables, greys, -1, batch_size=batch_size, layer=layer
  )
  preds = probs.argmax(1)
  lungs = np.stack([lung_mask(g) for g in greys])
  shares = cam_shares(cams, lungs)
  shape = (batch_size, *greys.shape[1:3], 3)
  side = gradcam.map_side(module, shape, layer)
  ind = indicator(shares, preds, class_names, map_side=side)
  os.makedirs(os.path.join(out_dir, 'shortcut'), exist_ok=True)
  figures = []
  for i, kind, rank in select_examples(labels, preds, probs, per_class):
    original, name = gradcam.load_source(handle, data_cfg, split, int(index[i]))
    header = gradcam.probability_header(probs[i], class_names, true=int(labels[i]), name=name)
    header.append(
      f'Grad-CAM mass: corners {shares["corners"][i]:.2f}, border '
      f'{shares["border"][i]:.2f}, outside lungs {shares["outside_lung"][i]:.2f}'
    )
    pred = class_names[preds[i]]
    rel = os.path.join('shortcut', f'{pred.replace(" ", "_")}_{kind}_{rank}.png')
    Image.fromarray(gradcam.source_panel(original, cams[i], header, alpha=alpha)).save(
      os.path.join(out_dir, rel)
    )
    figures.append((f'predicted {pred}, {kind} #{rank}', rel))
  return {
    'indicator': ind,
    'figures': figures,
    'images': len(greys),
    'cam_map': gradcam.describe_layers(module, shape, layer),
  }


__all__ = [
  'CORNER_FLAG',
  'CORNER_FRACTION',
  'EXAMPLES_PER_CLASS',
  'FRAME_FRACTION',
  'MIN_JUDGE_SIDE',
  'analyse_split',
  'border_frame',
  'cam_shares',
  'corner_squares',
  'indicator',
  'lung_envelope',
  'lung_mask',
  'markdown',
  'select_examples',
]
