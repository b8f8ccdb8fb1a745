"""Robustness to content a radiologist ignores: scores when the films' non-lung content changes.

A chest X-ray classifier that reads the lungs keeps its predictions when the film is zoomed a
little, when its border is replaced or when the burned-in text moves to another film; one that
learned where a hospital puts its labels, or how its films are framed, does not (DeGrave et al.,
Nature Machine Intelligence 2021). Each perturbation below acts on the films as the model sees
them (uint8, model input size) and is reported beside the clean score, both without test-time
augmentation (the same predictor for every row):

- `zoom_in` / `zoom_out`: centre zoom by the ends of the training augmentation's range
  (`config.data.augment.zoom`, default 1.1 / 0.9; black fill as in training): the model saw such
  films in training, so predictions should barely move.
- `zoom_in_beyond` / `zoom_out_beyond`: zoom by `BEYOND_ZOOM` (1.25 / 0.8), outside the default
  range: framing differs between hospitals and radiographers by about this much; the lungs stay in
  the picture (at 1.25 the crop drops the outer 10 % of each side: no lung there on a PA film).
- `border_swapped`: the outer `FRAME_FRACTION` (10 %) of each side replaced by the same frame of a
  film of another class: collimation edges, rulers, side markers and the body's outline near the
  edge move, the lungs do not (the lung fields start inside the frame on a PA film).
- `text_swapped`: the four corner squares (`TEXT_FRACTION` = 18 % of each side) replaced by those
  of a film of another class: where burned-in text, hospital labels and L/R markers sit. The
  squares touch at most the tip of a lung apex.

The partner film of each film is drawn (seeded) from the other classes, so whatever content moves
carries another class's cues: a model keyed on them changes its predictions, one that reads the
lungs does not. `changed` is the share of films whose predicted class differs from the clean
prediction.
"""

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from jaxcxr.evaluation import inference

PERTURBATIONS = (
  'zoom_in',
  'zoom_out',
  'zoom_in_beyond',
  'zoom_out_beyond',
  'border_swapped',
  'text_swapped',
)
BEYOND_ZOOM = (0.8, 1.25)  # outside the default training range (0.9, 1.1)
FRAME_FRACTION = 0.1  # border frame: the outer 10 % of each side (the shortcut indicator's frame)
TEXT_FRACTION = 0.18  # corner squares of burned-in text and markers

_DESCRIPTIONS = {
  'zoom_in': 'zoom {z:g}x (training augmentation range)',
  'zoom_out': 'zoom {z:g}x (training augmentation range)',
  'zoom_in_beyond': 'zoom {z:g}x (beyond the training range)',
  'zoom_out_beyond': 'zoom {z:g}x (beyond the training range)',
  'border_swapped': f'outer {FRAME_FRACTION:.0%} frame from a film of another class',
  'text_swapped': f'corner squares ({TEXT_FRACTION:.0%} a side) from a film of another class',
}


def zoom(images: np.ndarray, factor: float) -> np.ndarray:
  """Centre zoom of uint8 (N, S, S[, 1]) films by `factor` (> 1 enlarges), black fill, bilinear."""
  images = np.asarray(images)
  out = np.empty_like(images)
  for i, image in enumerate(images):
    grey = image[..., 0] if image.ndim == 3 else image
    h, w = grey.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, factor)
    warped = cv2.warpAffine(grey, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    out[i] = warped.reshape(out[i].shape)
  return out


def frame_mask(side: int, fraction: float = FRAME_FRACTION) -> np.ndarray:
  """bool (side, side): the outer `fraction` of each side."""
  f = max(1, round(side * fraction))
  mask = np.ones((side, side), bool)
  mask[f : side - f, f : side - f] = False
  return mask


def corner_mask(side: int, fraction: float = TEXT_FRACTION) -> np.ndarray:
  """bool (side, side): the four corner squares of side `fraction` of the image side."""
  f = max(1, round(side * fraction))
  mask = np.zeros((side, side), bool)
  mask[:f, :f] = mask[:f, -f:] = mask[-f:, :f] = mask[-f:, -f:] = True
  return mask


def swap_region(images: np.ndarray, partners: np.ndarray, region: np.ndarray) -> np.ndarray:
  """Films whose `region` (bool (S, S)) is copied from film `partners[i]`."""
  images = np.asarray(images)
  r = region.reshape(region.shape + (1,) * (images.ndim - 3))
  return np.where(r[None], images[np.asarray(partners)], images)


def partners(labels: Sequence[int], seed: int = 0) -> np.ndarray:
  """(N,) index of a film of another class for every film (seeded); itself if none exists."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  out = np.arange(len(labels))
  for i, y in enumerate(labels):
    others = np.flatnonzero(labels != y)
    if others.size:
      out[i] = rng.choice(others)
  return out


def zoom_factors(zoom_range: Sequence[float]) -> dict[str, float]:
  """The factor of each zoom perturbation for a training range (lo, hi)."""
  lo, hi = (float(z) for z in zoom_range)
  return {
    'zoom_in': hi if hi > 1 else 1.1,
    'zoom_out': lo if lo < 1 else 0.9,
    'zoom_in_beyond': BEYOND_ZOOM[1],
    'zoom_out_beyond': BEYOND_ZOOM[0],
  }


def perturb(
  images: np.ndarray, kind: str, mates: np.ndarray, zoom_range: Sequence[float] = (0.9, 1.1)
) -> np.ndarray:
  """uint8 (N, S, S[, 1]) films under perturbation `kind` (one of PERTURBATIONS)."""
  side = np.asarray(images).shape[1]
  if kind in ('zoom_in', 'zoom_out', 'zoom_in_beyond', 'zoom_out_beyond'):
    return zoom(images, zoom_factors(zoom_range)[kind])
  if kind == 'border_swapped':
    return swap_region(images, mates, frame_mask(side))
  if kind == 'text_swapped':
    return swap_region(images, mates, corner_mask(side))
  raise ValueError(f'Unknown perturbation {kind!r}; choose from {PERTURBATIONS}.')


def _scores(labels, preds, num_classes: int) -> dict:
  # Imported here: launchers must start without scikit-learn (tests/test_architecture.py).
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  return {
    'macro_f1': float(
      skm.f1_score(labels, preds, labels=range(num_classes), average='macro', zero_division=0)
    ),
    'accuracy': float(np.mean(np.asarray(labels) == np.asarray(preds))),
  }


def summarise(
  labels: Sequence[int],
  clean_probs: np.ndarray,
  perturbed_probs: dict[str, np.ndarray],
  class_names: Sequence[str],
  *,
  zoom_range: Sequence[float] = (0.9, 1.1),
  seed: int = 0,
) -> dict:
  """The section from probabilities: clean (N, C) and {kind: (N, C)} of the perturbed films.

  Returns:
    {'clean': {'macro_f1', 'accuracy'}, 'perturbations': {kind: {'description', 'macro_f1',
     'accuracy', 'changed', 'f1_drop'}}, 'images': N, 'seed'}.
  """
  labels = np.asarray(labels)
  c = len(class_names)
  clean = np.asarray(clean_probs).argmax(1)
  factors = zoom_factors(zoom_range)
  out = {'clean': _scores(labels, clean, c), 'perturbations': {}, 'images': len(labels)}
  out['seed'] = seed
  for kind, probs in perturbed_probs.items():
    preds = np.asarray(probs).argmax(1)
    row = _scores(labels, preds, c)
    row['changed'] = float(np.mean(preds != clean))
    row['f1_drop'] = out['clean']['macro_f1'] - row['macro_f1']
    row['description'] = _DESCRIPTIONS[kind].format(z=factors.get(kind, 0.0))
    out['perturbations'][kind] = row
  return out


def perturbed_predictions(
  predict: Callable[[np.ndarray], np.ndarray],
  images: np.ndarray,
  labels: Sequence[int],
  *,
  zoom_range: Sequence[float] = (0.9, 1.1),
  kinds: Sequence[str] = PERTURBATIONS,
  seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(clean probabilities, {kind: probabilities}) of `predict` on the films and their variants."""
  mates = partners(labels, seed)
  clean = np.asarray(predict(images))
  return clean, {k: np.asarray(predict(perturb(images, k, mates, zoom_range))) for k in kinds}


def evaluate(
  predict: Callable[[np.ndarray], np.ndarray],
  images: np.ndarray,
  labels: Sequence[int],
  class_names: Sequence[str],
  *,
  zoom_range: Sequence[float] = (0.9, 1.1),
  kinds: Sequence[str] = PERTURBATIONS,
  seed: int = 0,
) -> dict:
  """Macro-F1, accuracy and the share of changed predictions under each perturbation.

  Args:
    predict: fn(uint8 (n, S, S, 1) films) -> (n, C) probabilities (any batching inside).
    images: uint8 (N, S, S, 1) films at the model's input size.
    labels: (N,) true classes.
    class_names: names by index.
    zoom_range: the training augmentation's zoom range (`config.data.augment.zoom`).
    kinds: perturbations to run.
    seed: draws the partner films.

  Returns:
    `summarise(...)`.
  """
  clean, perturbed = perturbed_predictions(
    predict, images, labels, zoom_range=zoom_range, kinds=kinds, seed=seed
  )
  return summarise(labels, clean, perturbed, class_names, zoom_range=zoom_range, seed=seed)


def for_model(
  module,
  variables: dict,
  images: np.ndarray,
  labels: Sequence[int],
  class_names: Sequence[str],
  *,
  zoom_range: Sequence[float] = (0.9, 1.1),
  batch_size: int = 64,
  seed: int = 0,
) -> dict:
  """`evaluate` with a trained model's plain (no test-time augmentation) jitted predictor.

  The reports keep `seed` 0 whatever the run's seed: the same films then get the same partner
  films for every model (the recipe's seeds and the torch script compare on identical films; other
  partner draws moved the border row of cxr_eval by up to 0.02 macro-F1).
  """
  fn = inference.make_predict_fn(module, variables)
  return evaluate(
    lambda x: inference.predict_arrays(fn, x, batch_size),
    images,
    labels,
    class_names,
    zoom_range=zoom_range,
    seed=seed,
  )


def markdown(section: dict, title: str = 'Robustness to non-lung changes') -> str:
  """The report section: clean and perturbed macro-F1 and the share of changed predictions."""
  clean = section['clean']
  lines = [
    f'## {title}',
    '',
    f'{section["images"]} films, each perturbation applied to every film (no test-time '
    'augmentation in this section, so its clean row can differ from the score above). A model '
    'that reads the lungs keeps its predictions; large changes point to evidence in the framing, '
    'the border or the burned-in text (`jaxcxr.evaluation.robustness` justifies each change).',
    '',
    '| films | macro-F1 | accuracy | predictions changed |',
    '|---|---:|---:|---:|',
    f'| clean | {clean["macro_f1"]:.3f} | {clean["accuracy"]:.3f} | - |',
  ]
  for r in section['perturbations'].values():
    lines.append(
      f'| {r["description"]} | {r["macro_f1"]:.3f} | {r["accuracy"]:.3f} | {r["changed"]:.1%} |'
    )
  return '\n'.join(lines + [''])


def comparison_table(sections: dict[str, dict]) -> str:
  """Markdown: one row per perturbation, macro-F1 and changed predictions per named model."""
  names = list(sections)
  first = sections[names[0]]
  head = ' | '.join(f'{n} macro-F1 | {n} changed' for n in names)
  lines = [f'| films | {head} |', '|---|' + '---:|' * (2 * len(names))]
  clean = ' | '.join(f'{sections[n]["clean"]["macro_f1"]:.3f} | -' for n in names)
  lines.append(f'| clean | {clean} |')
  for kind, row in first['perturbations'].items():
    cells = []
    for n in names:
      r = sections[n]['perturbations'].get(kind)  # absent: that side ran out of budget
      cells.append(f'{r["macro_f1"]:.3f} | {r["changed"]:.1%}' if r else '- | -')
    lines.append(f'| {row["description"]} | {" | ".join(cells)} |')
  return '\n'.join(lines)


def summary_line(section: dict) -> str:
  """One line for a launcher: the clean macro-F1 and the worst perturbation."""
  worst = max(section['perturbations'].items(), key=lambda kv: kv[1]['f1_drop'])
  return (
    f'robustness: clean macro-F1 {section["clean"]["macro_f1"]:.3f}; worst {worst[0]} '
    f'{worst[1]["macro_f1"]:.3f} ({worst[1]["changed"]:.1%} of predictions changed)'
  )


__all__ = [
  'BEYOND_ZOOM',
  'FRAME_FRACTION',
  'PERTURBATIONS',
  'TEXT_FRACTION',
  'comparison_table',
  'corner_mask',
  'evaluate',
  'for_model',
  'frame_mask',
  'markdown',
  'partners',
  'perturb',
  'perturbed_predictions',
  'summarise',
  'summary_line',
  'swap_region',
  'zoom',
  'zoom_factors',
]
