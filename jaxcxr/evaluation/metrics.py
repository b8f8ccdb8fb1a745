"""Classification metrics with bootstrap confidence intervals and calibration.

`compute_metrics` turns labels and predicted probabilities into one JSON-able dict: accuracy,
per-class and macro precision / recall (sensitivity) / F1 / specificity, one-vs-rest ROC-AUC, the
confusion matrix, expected calibration error with reliability-diagram data, and percentile
bootstrap 95% CIs. scikit-learn computes every metric it has; the bootstrap re-weights the
examples with multinomial counts so that all resamples are a few matrix products.

`jaxcxr.evaluation.report` writes them as files and figures.
"""

import math
from collections.abc import Sequence

import numpy as np

ECE_BINS = 15
CI_LEVEL = 0.95


def check_inputs(labels, probs, class_names) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  probs = np.asarray(probs, np.float64)
  c = len(class_names)
  if probs.ndim != 2 or probs.shape != (labels.shape[0], c):
    raise ValueError(
      f'probs must be (N, num_classes) = ({labels.shape[0]}, {c}); got '
      f'{probs.shape} for {len(class_names)} class names {tuple(class_names)}.'
    )
  if labels.size == 0:
    raise ValueError('No examples to evaluate (labels is empty).')
  if labels.min() < 0 or labels.max() >= c:
    raise ValueError(f'labels must lie in [0, {c}); got min {labels.min()}, max {labels.max()}.')
  return labels, probs


def calibration(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
  """Expected calibration error of the top-1 confidence, with reliability-diagram data.

  Bins are equal-width on (0, 1] (a confidence c falls in bin ceil(c * n_bins) - 1).
  ECE = sum_b |accuracy_b - confidence_b| * n_b / N.

  Returns:
    {'ece', 'bin_edges' (n_bins + 1), 'bin_confidence', 'bin_accuracy' (NaN for empty bins),
     'bin_count'}.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  conf = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
  count = np.bincount(bins, minlength=n_bins).astype(np.float64)
  sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
  sum_acc = np.bincount(bins, weights=correct, minlength=n_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_conf = sum_conf / count
    mean_acc = sum_acc / count
  ece = float(np.sum(np.abs(sum_acc - sum_conf)) / labels.shape[0])
  return {
    'ece': ece,
    'n_bins': n_bins,
    'bin_edges': np.linspace(0.0, 1.0, n_bins + 1).tolist(),
    'bin_confidence': mean_conf.tolist(),
    'bin_accuracy': mean_acc.tolist(),
    'bin_count': count.astype(int).tolist(),
  }


def _weighted_f1(weights: np.ndarray, y_onehot: np.ndarray, p_onehot: np.ndarray) -> np.ndarray:
  """Per-class F1 for each row of example weights: (B, N) -> (B, C); 0 where undefined."""
  tp = weights @ (y_onehot * p_onehot)
  support = weights @ y_onehot
  predicted = weights @ p_onehot
  denom = support + predicted  # 2TP + FP + FN
  return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """ROC-AUC (ties count 1/2) of `scores` for each row of example weights: (B, N) -> (B,).

  Exact Mann-Whitney statistic, equal to `roc_auc_score(..., sample_weight=row)`; NaN where a
  resample has no positives or no negatives.
  """
  order = np.argsort(scores, kind='stable')
  s = scores[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each distinct score
  w = weights[:, order]
  pos = positive[order].astype(np.float64)
  pos_u = np.add.reduceat(w * pos, starts, axis=1)  # (B, U) weighted positives per score
  neg_u = np.add.reduceat(w * (1.0 - pos), starts, axis=1)
  neg_below = np.cumsum(neg_u, axis=1) - neg_u
  num = np.sum(pos_u * (neg_below + 0.5 * neg_u), axis=1)
  den = pos_u.sum(axis=1) * neg_u.sum(axis=1)
  return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def bootstrap_ci(
  labels: np.ndarray,
  probs: np.ndarray,
  *,
  n_bootstrap: int = 1000,
  seed: int = 0,
  level: float = CI_LEVEL,
) -> dict:
  """Percentile bootstrap CIs for accuracy, macro F1 / AUC and per-class precision, recall, ...

  Each resample of the N examples (with replacement) is a row of multinomial counts, so the
  statistics of all resamples are weighted sums. A class with no positives (or negatives) in a
  resample is left out of that resample's macro AUC; a per-class ratio whose denominator is 0 in
  a resample (e.g. precision of a class never predicted) is left out of that class's interval.

  Returns:
    {'accuracy': [lo, hi], 'macro_f1': [lo, hi], 'macro_auc': [lo, hi],
     'per_class': [{'precision', 'recall', 'specificity', 'f1': [lo, hi]} per class index],
     'n_bootstrap', 'level', 'seed'}.
  """
  n, c = probs.shape
  rng = np.random.default_rng(seed)
  weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(np.float64)
  preds = probs.argmax(axis=1)
  y_onehot = np.eye(c)[labels]
  p_onehot = np.eye(c)[preds]
  acc = weights @ (preds == labels).astype(np.float64) / n
  macro_f1 = _weighted_f1(weights, y_onehot, p_onehot).mean(axis=1)
  aucs = np.stack([_weighted_auc(weights, labels == k, probs[:, k]) for k in range(c)], axis=1)
  with np.errstate(all='ignore'):
    valid = ~np.isnan(aucs)
    macro_auc = np.where(
      valid.any(axis=1), np.nansum(aucs, axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan
    )
  q = [50 * (1 - level), 50 * (1 + level)]

  def interval(x):
    x = x[~np.isnan(x)]
    return [float(v) for v in np.percentile(x, q)] if x.size else [math.nan, math.nan]

  return {
    'accuracy': interval(acc),
    'macro_f1': interval(macro_f1),
    'macro_auc': interval(macro_auc),
    'per_class': _per_class_intervals(weights, y_onehot, p_onehot, interval),
    'n_bootstrap': n_bootstrap,
    'level': level,
    'seed': seed,
  }


def _per_class_intervals(
  weights: np.ndarray, y_onehot: np.ndarray, p_onehot: np.ndarray, interval
) -> list[dict]:
  """Per-class precision / recall / specificity / F1 intervals from the resample weights."""
  n = weights.sum(axis=1, keepdims=True)  # (B, 1): N in every resample
  tp = weights @ (y_onehot * p_onehot)  # (B, C)
  support = weights @ y_onehot
  predicted = weights @ p_onehot
  fp = predicted - tp
  negatives = n - support  # tn + fp
  with np.errstate(invalid='ignore', divide='ignore'):
    stats_ = {
      'precision': tp / predicted,
      'recall': tp / support,
      'specificity': (negatives - fp) / negatives,
      'f1': 2 * tp / (support + predicted),
    }
  return [
    {k: interval(np.where(np.isfinite(v[:, c]), v[:, c], np.nan)) for k, v in stats_.items()}
    for c in range(y_onehot.shape[1])
  ]


def compute_metrics(
  labels,
  probs,
  class_names: Sequence[str],
  *,
  n_bootstrap: int = 1000,
  seed: int = 0,
  n_bins: int = ECE_BINS,
) -> dict:
  """All evaluation metrics of one split.

  Args:
    labels: (N,) int class indices.
    probs: (N, C) predicted probabilities (rows sum to 1); the prediction is the argmax.
    class_names: C names, in index order.
    n_bootstrap: resamples for the 95% CIs (0 disables them).
    seed: bootstrap seed.
    n_bins: ECE bins.

  Returns:
    A JSON-able dict: 'num_examples', 'class_names', 'accuracy', 'per_class' (name -> precision,
    recall, f1, specificity, auc, support), 'macro' (precision, recall, f1, specificity, auc),
    'confusion_matrix' (rows true, columns predicted), 'calibration' (see `calibration`),
    'ci95' (see `bootstrap_ci`) and 'notes' (e.g. a class absent from the labels: its AUC is NaN
    and the macro AUC averages the other classes).
  """
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  class_names = tuple(class_names)
  labels, probs = check_inputs(labels, probs, class_names)
  c = len(class_names)
  idx = list(range(c))
  preds = probs.argmax(axis=1)
  notes = []

  precision, recall, f1, support = skm.precision_recall_fscore_support(
    labels, preds, labels=idx, zero_division=0
  )
  # (C, 2, 2) one-vs-rest matrices [[tn, fp], [fn, tp]].
  mcm = skm.multilabel_confusion_matrix(labels, preds, labels=idx)
  tn, fp = mcm[:, 0, 0].astype(np.float64), mcm[:, 0, 1].astype(np.float64)
  specificity = np.divide(tn, tn + fp, out=np.zeros_like(tn), where=(tn + fp) > 0)
  auc = np.full(c, np.nan)
  for k in idx:
    positives = labels == k
    if positives.all() or not positives.any():
      notes.append(
        f'ROC-AUC of {class_names[k]!r} is undefined (the labels have '
        f'{"no" if not positives.any() else "only"} {class_names[k]!r} examples); '
        'the macro AUC averages the other classes.'
      )
      continue
    auc[k] = skm.roc_auc_score(positives, probs[:, k])
  for k in idx:
    if support[k] == 0:
      notes.append(
        f'Class {class_names[k]!r} has no examples: its recall and F1 are 0 by '
        'convention and count in the macro averages.'
      )

  out = {
    'num_examples': int(labels.shape[0]),
    'class_names': list(class_names),
    'accuracy': float(skm.accuracy_score(labels, preds)),
    'per_class': {
      name: {
        'precision': float(precision[k]),
        'recall': float(recall[k]),
        'f1': float(f1[k]),
        'specificity': float(specificity[k]),
        'auc': float(auc[k]),
        'support': int(support[k]),
      }
      for k, name in enumerate(class_names)
    },
    'macro': {
      'precision': float(precision.mean()),
      'recall': float(recall.mean()),
      'f1': float(f1.mean()),
      'specificity': float(specificity.mean()),
      'auc': float(np.nanmean(auc)) if not np.isnan(auc).all() else math.nan,
    },
    'confusion_matrix': skm.confusion_matrix(labels, preds, labels=idx).tolist(),
    'calibration': calibration(labels, probs, n_bins),
    'notes': notes,
  }
  if n_bootstrap > 0:
    out['ci95'] = bootstrap_ci(labels, probs, n_bootstrap=n_bootstrap, seed=seed)
  return out
