"""Tests for jaxcxr.evaluation.metrics / report: metrics against hand-computed values, bootstrap,
report files."""

import json
import math
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcxr.evaluation import metrics as evaluate
from jaxcxr.evaluation import report as report_lib
from jaxcxr.training import run_log

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


def _from_confusion(cm):
  """Labels and probabilities (0.8 on the predicted class) realising confusion matrix `cm`."""
  labels, preds = [], []
  for t, row in enumerate(cm):
    for p, count in enumerate(row):
      labels += [t] * count
      preds += [p] * count
  c = len(cm)
  probs = np.full((len(labels), c), 0.2 / (c - 1))
  probs[np.arange(len(labels)), preds] = 0.8
  return np.array(labels), probs


# Each case: confusion matrix, then hand-computed accuracy and per-class
# (precision, recall, f1, specificity).
CASES = [
  pytest.param(
    [[5, 1, 0], [2, 3, 1], [0, 0, 4]],
    12 / 16,
    [(5 / 7, 5 / 6, 10 / 13, 8 / 10), (3 / 4, 3 / 6, 6 / 10, 9 / 10), (4 / 5, 1.0, 8 / 9, 11 / 12)],
    id='mixed',
  ),
  pytest.param([[4, 0, 0], [0, 3, 0], [0, 0, 2]], 1.0, [(1.0, 1.0, 1.0, 1.0)] * 3, id='perfect'),
  pytest.param(
    # Nobody is predicted 'Normal': precision 0 by convention (zero_division=0).
    [[2, 0, 2], [1, 0, 1], [0, 0, 3]],
    5 / 9,
    [(2 / 3, 2 / 4, 4 / 7, 4 / 5), (0.0, 0.0, 0.0, 1.0), (3 / 6, 1.0, 6 / 9, 3 / 6)],
    id='never_predicted',
  ),
]


@pytest.mark.parametrize(('cm', 'accuracy', 'per_class'), CASES)
def test_metrics_match_hand_computation(cm, accuracy, per_class):
  labels, probs = _from_confusion(cm)
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=0)
  assert m['num_examples'] == int(np.sum(cm))
  assert m['confusion_matrix'] == cm
  assert m['accuracy'] == pytest.approx(accuracy)
  for name, (precision, recall, f1, specificity) in zip(NAMES, per_class, strict=True):
    got = m['per_class'][name]
    assert got['precision'] == pytest.approx(precision)
    assert got['recall'] == pytest.approx(recall)
    assert got['f1'] == pytest.approx(f1)
    assert got['specificity'] == pytest.approx(specificity)
    assert got['support'] == sum(cm[NAMES.index(name)])
  expected = np.array(per_class)
  for key, col in (('precision', 0), ('recall', 1), ('f1', 2), ('specificity', 3)):
    assert m['macro'][key] == pytest.approx(expected[:, col].mean())
  assert 'ci95' not in m
  assert m['notes'] == []


def test_auc_hand_computed_with_tie():
  # COVID vs rest: positives score 0.9, 0.4; negatives 0.5, 0.4, 0.1.
  # Pairs won: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.5 -> 4.5 / 6.
  covid = np.array([0.9, 0.4, 0.5, 0.4, 0.1])
  labels = np.array([0, 0, 1, 2, 1])
  probs = np.stack([covid, (1 - covid) / 2, (1 - covid) / 2], axis=1)
  probs[:, 1] += np.array([0, 0, 0.01, -0.01, 0.01])  # break argmax ties away from class 2 / 1
  probs[:, 2] -= np.array([0, 0, 0.01, -0.01, 0.01])
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=0)
  assert m['per_class']['COVID']['auc'] == pytest.approx(4.5 / 6)


def test_absent_class_gives_nan_auc_and_note():
  labels, probs = _from_confusion([[3, 1, 0], [1, 2, 1], [0, 0, 0]])
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=200)
  vp = m['per_class']['Viral Pneumonia']
  assert math.isnan(vp['auc'])
  assert vp['support'] == 0 and vp['recall'] == 0.0 and vp['precision'] == 0.0
  assert vp['specificity'] == pytest.approx(7 / 8)
  present = [m['per_class'][n]['auc'] for n in NAMES[:2]]
  assert not any(math.isnan(a) for a in present)
  assert m['macro']['auc'] == pytest.approx(np.mean(present))
  assert any('Viral Pneumonia' in n and 'ROC-AUC' in n for n in m['notes'])
  lo, hi = m['ci95']['macro_auc']
  assert 0.0 <= lo <= hi <= 1.0


def test_calibration_hand_computed():
  # Two examples at confidence 0.9 (one right), two at 0.5 (both right):
  # ECE = (2 * |0.5 - 0.9| + 2 * |1.0 - 0.5|) / 4 = 0.45.
  probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
  labels = np.array([0, 1, 0, 1])
  cal = evaluate.calibration(labels, probs, n_bins=15)
  assert cal['ece'] == pytest.approx(0.45)
  assert cal['bin_count'][13] == 2 and cal['bin_count'][7] == 2 and sum(cal['bin_count']) == 4
  assert cal['bin_accuracy'][13] == pytest.approx(0.5)
  assert cal['bin_confidence'][7] == pytest.approx(0.5)
  assert math.isnan(cal['bin_accuracy'][0])
  assert len(cal['bin_edges']) == 16


def test_bootstrap_statistics_equal_sklearn_with_sample_weights():
  rng = np.random.default_rng(1)
  n, c = 60, 3
  labels = rng.integers(0, c, n)
  probs = rng.dirichlet(np.ones(c), n).round(1)  # rounding makes ties
  weights = rng.multinomial(n, np.full(n, 1 / n), size=5).astype(float)
  preds = probs.argmax(1)
  f1 = evaluate._weighted_f1(weights, np.eye(c)[labels], np.eye(c)[preds])
  for b in range(5):
    w = weights[b]
    assert f1[b] == pytest.approx(
      skm.f1_score(labels, preds, labels=range(c), average=None, sample_weight=w, zero_division=0)
    )
    for k in range(c):
      auc = evaluate._weighted_auc(weights[b : b + 1], labels == k, probs[:, k])[0]
      assert auc == pytest.approx(skm.roc_auc_score(labels == k, probs[:, k], sample_weight=w))


def test_bootstrap_ci_seeded_and_sensible():
  rng = np.random.default_rng(0)
  n = 400
  labels = rng.integers(0, 3, n)
  logits = rng.normal(size=(n, 3))
  logits[np.arange(n), labels] += 1.5
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  a = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=500, seed=3)
  b = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=500, seed=3)
  assert a['ci95'] == b['ci95']
  for key, point in (
    ('accuracy', a['accuracy']),
    ('macro_f1', a['macro']['f1']),
    ('macro_auc', a['macro']['auc']),
  ):
    lo, hi = a['ci95'][key]
    assert lo < point < hi
    assert 0.02 < hi - lo < 0.2
  # Binomial standard error of the accuracy: the CI width is about 2 * 1.96 * se.
  acc = a['accuracy']
  se = math.sqrt(acc * (1 - acc) / n)
  width = a['ci95']['accuracy'][1] - a['ci95']['accuracy'][0]
  assert width == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_per_class_ci_of_precision_recall_specificity():
  rng = np.random.default_rng(2)
  n = 600
  labels = rng.integers(0, 3, n)
  logits = rng.normal(size=(n, 3))
  logits[np.arange(n), labels] += 1.5
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=1000, seed=0)
  per_class = m['ci95']['per_class']
  assert len(per_class) == 3
  for c, name in enumerate(NAMES):
    point = m['per_class'][name]
    for key in ('precision', 'recall', 'specificity', 'f1'):
      lo, hi = per_class[c][key]
      assert lo < point[key] < hi, (name, key)
    # Recall is a proportion over the class's ~200 examples, specificity over the ~400 others:
    # their CI widths are about 2 * 1.96 * binomial se.
    for key, count in (('recall', point['support']), ('specificity', n - point['support'])):
      p = point[key]
      width = per_class[c][key][1] - per_class[c][key][0]
      assert width == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / count), rel=0.25)
  # The report table shows them.
  lo, hi = per_class[0]['specificity']
  assert f'({lo:.3f}-{hi:.3f})' in report_lib.summary_table(m)


def test_perfect_predictions_have_degenerate_ci():
  labels, probs = _from_confusion([[4, 0, 0], [0, 3, 0], [0, 0, 2]])
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=100)
  assert m['ci95']['accuracy'] == [1.0, 1.0]
  assert m['ci95']['macro_auc'] == [1.0, 1.0]
  assert m['macro']['auc'] == 1.0


@pytest.mark.parametrize(
  ('labels', 'probs', 'match'),
  [
    ([0, 1], np.full((2, 2), 0.5), 'probs must be'),
    ([0, 3], np.full((2, 3), 1 / 3), 'labels must lie'),
    ([], np.zeros((0, 3)), 'No examples'),
  ],
)
def test_bad_inputs_raise(labels, probs, match):
  with pytest.raises(ValueError, match=match):
    evaluate.compute_metrics(labels, probs, NAMES)


def test_read_history_keeps_epoch_rows(tmp_path):
  rows = [
    {'kind': 'train', 'step': 10, 'loss': 1.0},
    {'kind': 'epoch', 'step': 20, 'epoch': 1, 'train_loss': 0.9, 'val_accuracy': 0.5},
    {'kind': 'epoch', 'step': 40, 'epoch': 2, 'train_loss': 0.7},
  ]
  text = '\n'.join(json.dumps(r) for r in rows) + '\n\n{"kind": "epoch", "ep'  # cut-off line
  (tmp_path / 'metrics.jsonl').write_text(text)
  history = run_log.read_rows(str(tmp_path), 'epoch')
  assert [h['epoch'] for h in history] == [1, 2]
  assert run_log.read_rows(str(tmp_path / 'missing'), 'epoch') == []


def test_write_report_files(tmp_path):
  labels, probs = _from_confusion([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=50)
  history = [
    {'epoch': 1, 'train_loss': 1.0, 'val_loss': 1.1, 'learning_rate': 1e-3},
    {'epoch': 2, 'train_loss': 0.5, 'val_accuracy': 0.7},
  ]  # missing keys tolerated
  written = report_lib.write_report(
    str(tmp_path), m, labels, probs, NAMES, history=history, split='val', extra={'step': 7}
  )
  for name in (
    'report.json',
    'report.md',
    'confusion_matrix.png',
    'roc_curves.png',
    'reliability_diagram.png',
    'training_curves.png',
  ):
    path = tmp_path / name
    assert path.stat().st_size > 1000 or name.endswith(('.json', '.md')), name
    assert str(path) in written.values()
  with open(tmp_path / 'confusion_matrix.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['split'] == 'val' and report['extra'] == {'step': 7}
  assert report['metrics']['accuracy'] == 0.75
  assert report['metrics']['confusion_matrix'] == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
  md = (tmp_path / 'report.md').read_text()
  ci = m['ci95']['per_class'][0]
  cells = [
    f'{v:.4f} ({ci[k][0]:.3f}-{ci[k][1]:.3f})'
    for k, v in (('precision', 0.7143), ('recall', 0.8333), ('specificity', 0.8), ('f1', 0.7692))
  ]
  assert '| COVID | ' + ' | '.join(cells) + ' |' in md
  assert '| Viral Pneumonia | 0 | 0 | 4 |' in md
  assert '## Figures' in md and '![roc_curves](roc_curves.png)' in md

  # figures=False (config.eval.figures, launch.evaluate --nofigures): the same report, no PNG.
  bare = tmp_path / 'bare'
  kwargs = {'history': history, 'split': 'val', 'extra': {'step': 7}}
  written = report_lib.write_report(str(bare), m, labels, probs, NAMES, **kwargs, figures=False)
  assert sorted(p.name for p in bare.iterdir()) == ['report.json', 'report.md']
  assert set(written) == {'json', 'markdown'}
  bare_report = json.loads((bare / 'report.json').read_text())
  assert bare_report['figures'] == {} and bare_report['metrics'] == report['metrics']
  bare_md = (bare / 'report.md').read_text()
  assert '## Figures' not in bare_md and md.startswith(bare_md)  # all but the figures section


def test_write_report_nan_is_strict_json_and_no_history(tmp_path):
  labels, probs = _from_confusion([[3, 1, 0], [1, 2, 1], [0, 0, 0]])
  m = evaluate.compute_metrics(labels, probs, NAMES, n_bootstrap=0)
  report_lib.write_report(str(tmp_path), m, labels, probs, NAMES)
  text = (tmp_path / 'report.json').read_text()
  assert 'NaN' not in text
  report = json.loads(text)
  assert report['metrics']['per_class']['Viral Pneumonia']['auc'] is None
  assert not os.path.exists(tmp_path / 'training_curves.png')
  assert (
    '| Viral Pneumonia | 0.0000 | 0.0000 | 0.8750 | 0.0000 | n/a | 0 |'
    in (tmp_path / 'report.md').read_text()
  )
