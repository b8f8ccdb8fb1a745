"""Tests for the out-of-distribution score (jaxcxr.evaluation.ood, ood_eval) and its use by
launch.predict, launch.fit_ood and the run report.

Numbers are checked against hand computations on synthetic features; the mechanics on a tiny
phantom run trained once in-process (configs/tiny.py, the real end-of-training report); the
real-data checks skip without ../shared.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import special
from sklearn import covariance

from jaxcxr import data, models
from jaxcxr.data import images, input_checks, ood_material, preprocess
from jaxcxr.evaluation import folder_eval, inference, ood, ood_eval, report
from jaxcxr.training import checkpoint
from tests import ood_material as material
from tests import train_helpers
from tests.test_gradcam import numpy_variables

C = 3
K = 5


def _synthetic(n, seed, shift=0.0):
  """(outputs (n, C + K), labels): logits, then class-dependent Gaussian features."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % C
  centres = np.array([[3, 0, 0, 1, 1], [0, 3, 0, 1, 2], [0, 0, 3, 1, 0]], float)
  feats = centres[labels] + rng.normal(0, 0.3, (n, K)) + shift
  logits = np.eye(C)[labels] * 4 + rng.normal(0, 0.5, (n, C))
  return np.concatenate([logits, feats], 1), labels


def _csv_rows(path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize(
  ('n', 'false_alarm', 'confidence', 'want'),
  [
    (120, 0.05, 0.95, 119),  # scipy: smallest k with beta.ppf(0.05, k, n + 1 - k) >= 0.95
    (180, 0.05, 0.95, 177),
    (59, 0.05, 0.95, 59),  # 1 - 0.95 ** 59 = 0.9515: the maximum just qualifies
    (58, 0.05, 0.95, 58),  # none qualifies: the maximum
    (6, 0.05, 0.95, 6),
    (120, 0.05, 0.0, 114),  # the plain 95 % quantile
    (1000, 0.05, 0.95, 962),
  ],
)
def test_threshold_rank(n, false_alarm, confidence, want):
  assert ood.threshold_rank(n, false_alarm, confidence) == want


def test_fit_and_score_against_hand_computation():
  train, labels = _synthetic(300, 0)
  val, _ = _synthetic(200, 1)
  model = ood.fit(train, labels, val, num_classes=C, false_alarm=0.1, meta={'step': 5})
  # L2-normalised features, class means, Ledoit-Wolf of the class-centred rows.
  f = train[:, C:] / np.linalg.norm(train[:, C:], axis=1, keepdims=True)
  means = np.stack([f[labels == c].mean(0) for c in range(C)])
  prec = covariance.LedoitWolf(assume_centered=True).fit(f - means[labels]).precision_
  v = val[:, C:] / np.linalg.norm(val[:, C:], axis=1, keepdims=True)
  d = np.stack([np.einsum('nk,kl,nl->n', v - m, prec, v - m) for m in means], 1).min(1)
  q25, q50, q75 = np.percentile(d, [25, 50, 75])
  want = (d - q50) / (q75 - q25)
  got = ood.score(model, val)
  np.testing.assert_allclose(got['mahalanobis'], want, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(got['energy'], -special.logsumexp(val[:, :C], axis=1), rtol=1e-12)
  rank = ood.threshold_rank(200, 0.1, 0.95)
  assert model.threshold == pytest.approx(np.sort(want)[rank - 1])
  assert model.energy_threshold == pytest.approx(np.sort(got['energy'])[rank - 1])
  assert np.sum(ood.in_distribution(model, got)) == rank  # that many validation films pass
  assert model.meta['step'] == 5 and model.meta['num_train'] == 300
  assert f'score {rank} of 200' in model.meta['rule'] and 'at most 10%' in model.meta['rule']
  # Shifted features score far higher: every shifted row is beyond the threshold.
  far, _ = _synthetic(50, 2, shift=2.0)
  assert np.all(ood.score(model, far)['mahalanobis'] > model.threshold)


def test_fit_refuses_bad_inputs():
  train, labels = _synthetic(30, 0)
  with pytest.raises(ValueError, match='Every class needs training films'):
    ood.fit(train, np.zeros(30, int), train, num_classes=C)
  with pytest.raises(ValueError, match='at least 2'):
    ood.fit(train, labels, train[:1], num_classes=C)
  with pytest.raises(ValueError, match='false_alarm'):
    ood.fit(train, labels, train, num_classes=C, false_alarm=0.0)
  with pytest.raises(ValueError, match=r'expected \(N, 3 \+ 5\)'):
    ood.split_outputs(train[:, :6], C, K)


def test_save_load_round_trip_and_staleness(tmp_path):
  train, labels = _synthetic(60, 0)
  model = ood.fit(train, labels, train, num_classes=C, meta={'step': 7, 'model': 'cnn_bn'})
  assert ood.load(str(tmp_path)) is None
  ood.save(model, str(tmp_path))
  back = ood.load(str(tmp_path))
  assert back.threshold == model.threshold and back.meta == model.meta
  np.testing.assert_array_equal(
    ood.score(back, train)['mahalanobis'], ood.score(model, train)['mahalanobis']
  )

  class Bundle:  # what load_for reads of a restored checkpoint
    step = 7
    config = type('Config', (), {'model': type('Model', (), {'name': 'cnn_bn'})})

  assert ood.load_for(str(tmp_path), Bundle)[0] is not None
  Bundle.step = 9
  got, why = ood.load_for(str(tmp_path), Bundle)
  assert got is None and 'step 7' in why and '--refit' in why
  (tmp_path / ood.FILE).write_bytes(b'not a zip')
  with pytest.raises(ValueError, match=r'unreadable.*launch\.fit_ood'):
    ood.load(str(tmp_path))


def test_feature_fn_returns_logits_and_pooled_cam_features():
  module = models.build('cnn_bn', C, widths=(8, 16))
  variables = numpy_variables(module, (1, 32, 32, 3), seed=1)
  imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
  out = np.asarray(ood.make_feature_fn(module, variables)(imgs))
  logits, feats = ood.split_outputs(out, C, 16)
  x = preprocess.to_model_input_np(imgs)
  want_logits, state = module.apply(variables, x, mutable=['intermediates'])
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    feats, np.asarray(state['intermediates']['cam_features'][0]).mean((1, 2)), rtol=1e-5, atol=1e-6
  )


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny phantom run trained in-process with the real end-of-training report (the reporter
  of launch.train): its workdir."""
  root = tmp_path_factory.mktemp('ood_run')
  config, _ = train_helpers.tiny_config(root / 'tfds', **{'train.num_epochs': 3})
  work = str(root / 'work')
  report.train_and_report(config, work)
  return work


def test_run_without_the_report_sections_still_fits_the_score(tmp_path):
  """eval.ood / eval.robustness / eval.figures False: the report has neither section nor a
  figure (nor their cost), and the score launch.predict needs is still fitted on the shipped
  checkpoint."""
  overrides = train_helpers.LEAN_REPORT  # no figures either
  config, _ = train_helpers.tiny_config(tmp_path / 'tfds', **overrides)
  work = str(tmp_path / 'work')
  summary = report.train_and_report(config, work)
  rep = json.loads(Path(work, 'report.json').read_text())
  assert 'ood' not in rep and 'robustness' not in rep, sorted(rep)
  markdown = Path(work, 'report.md').read_text()
  assert 'Out-of-distribution' not in markdown and 'Robustness' not in markdown
  assert rep['figures'] == {} and not list(Path(work).glob('*.png'))
  model = ood.load(work)
  assert model is not None and model.meta['step'] == summary['best_step']
  assert model.meta['step'] == checkpoint.restore_for_inference(work).step


def test_run_report_has_the_ood_section_and_saves_the_score(run):
  model = ood.load(run)
  bundle = checkpoint.restore_for_inference(run)
  assert model is not None and model.meta['step'] == bundle.step
  assert model.meta['rule'] == (
    'validation score 6 of 6 in ascending order (100.0% of them pass): '
    'a tolerance bound keeping false alarms on films like the '
    'validation split at most 5% with 95% confidence'
  )
  rep = json.loads(Path(run, 'report.json').read_text())['ood']
  names = [s['name'] for s in rep['sets']]
  assert names == [
    'noise',
    'blank',
    'gradient',
    'text',
    'photos',
    'photos_grey',
    'mri',
    'rot90',
    'inverted',
    'tinted',
    'corner_crop',
  ]  # no phantom set: it is the data
  sets = {s['name']: s for s in rep['sets']}
  # What the input checks catch, they catch whatever the model: blank, colour photos, tints.
  for name in ('blank', 'photos', 'tinted'):
    assert sets[name]['checks'] == 1.0 and sets[name]['flagged']['mahalanobis'] == 1.0, name
    assert sets[name]['auroc']['mahalanobis_with_checks'] == 1.0, name
  assert rep['in_distribution']['n'] == 6 and rep['in_distribution']['false_alarm']['checks'] == 0
  md = Path(run, 'report.md').read_text()
  assert '## Out-of-distribution inputs' in md and '| corner_crop | transformed X-rays |' in md


def test_predict_columns_reasons_and_reject(run, tmp_path):
  bundle = checkpoint.restore_for_inference(run)
  handle = data.prepare(bundle.config.data)
  films = [os.path.join(handle.phantom_dir, n) for n in handle.filenames('test')]
  odd = [
    material.write(tmp_path / 'blank.png', material.blank_rgba(64)),
    material.write(tmp_path / 'photo.jpg', ood_material.generated('photos', 1, 80)[0], 'JPEG'),
    material.write(tmp_path / 'wide.png', np.tile(np.arange(200, dtype=np.uint8), (40, 1))),
  ]
  out = str(tmp_path / 'p.csv')
  result = inference.predict_workdir(run, out, images=films + odd, leaderboard_labels=True)
  assert result['rows'] == 9 and not result['ood_warning']
  rows = _csv_rows(out)
  assert list(rows[0])[-4:] == ['leaderboard_label', 'ood_score', 'in_distribution', 'ood_reason']
  model = ood.load(run)
  for r in rows:
    score = float(r['ood_score'])
    reasons = r['ood_reason'].split(';') if r['ood_reason'] else []
    assert ('features' in reasons) == (score > model.threshold)
    assert r['in_distribution'] == ('false' if reasons else 'true')
  by_file = {r['file']: r for r in rows}
  assert by_file[odd[0]]['ood_reason'].startswith('near_constant')
  assert by_file[odd[1]]['ood_reason'].startswith('colour')
  assert by_file[odd[2]]['ood_reason'].startswith('aspect_ratio')
  assert by_file[odd[0]]['predicted_label'] in bundle.class_names  # unchanged unless asked
  # --reject_ood: flagged rows say so in both labels; the probabilities stay.
  rejected = str(tmp_path / 'r.csv')
  inference.predict_workdir(
    run, rejected, images=films + odd, leaderboard_labels=True, reject_ood=True
  )
  for a, b in zip(rows, _csv_rows(rejected), strict=True):
    flagged = a['in_distribution'] == 'false'
    assert (b['predicted_label'] == inference.REJECTED_LABEL) == flagged
    assert (b['leaderboard_label'] == inference.REJECTED_LABEL) == flagged
    assert b['prob_COVID'] == a['prob_COVID']
  # A prepared split: the same scores as its files (same pixels, same features).
  split = inference.predict_workdir(run, str(tmp_path / 's.csv'), split='test')
  assert split['rows'] == 6
  for a, b in zip(rows[:6], _csv_rows(tmp_path / 's.csv'), strict=True):
    assert float(a['ood_score']) == pytest.approx(float(b['ood_score']), rel=1e-4, abs=1e-4)


def test_predict_without_a_fitted_score_uses_the_checks_only(run, tmp_path):
  work = tmp_path / 'copy'
  shutil.copytree(run, work)
  os.remove(work / ood.FILE)
  blank = material.write(tmp_path / 'blank.png', material.blank_rgba(64))
  result = inference.predict_workdir(str(work), str(tmp_path / 'p.csv'), images=[blank])
  assert 'launch.fit_ood' in result['ood_warning'] and result['ood_flagged'] == 1
  (row,) = _csv_rows(tmp_path / 'p.csv')
  assert row['ood_score'] == '' and row['ood_reason'] == 'near_constant'


def test_folder_evaluation_has_the_ood_section(run, tmp_path):
  """launch.evaluate --eval_dir: the folder's films are the in-distribution set; their false-alarm
  rate is the share that launch.predict flags for the same files. Without a fitted score, a note
  says how to fit one."""
  bundle = checkpoint.restore_for_inference(run)
  handle = data.prepare(bundle.config.data)
  folder = tmp_path / 'hospital'
  files = []
  for name, label in zip(handle.filenames('test'), handle.labels('test'), strict=True):
    dest = folder / bundle.class_names[int(label)] / os.path.basename(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(handle.phantom_dir, name), dest)
    files.append(str(dest))
  result = folder_eval.evaluate_folder(
    run, str(folder), out=str(tmp_path / 'rep'), bootstrap=20, shortcut=False
  )
  section = result['ood']
  assert section['in_distribution']['n'] == 6 and section['in_distribution']['name'] == (
    'folder hospital'
  )
  assert [s['name'] for s in section['sets']][:3] == ['noise', 'blank', 'gradient']
  inference.predict_workdir(run, str(tmp_path / 'p.csv'), images=files)
  flagged = [r['in_distribution'] == 'false' for r in _csv_rows(tmp_path / 'p.csv')]
  assert section['in_distribution']['false_alarm']['mahalanobis'] == pytest.approx(np.mean(flagged))
  assert '## Out-of-distribution inputs' in (tmp_path / 'rep' / 'report.md').read_text()
  work = tmp_path / 'copy'
  shutil.copytree(run, work)
  os.remove(work / ood.FILE)
  bare = folder_eval.evaluate_folder(
    str(work), str(folder), out=str(tmp_path / 'rep2'), bootstrap=20, shortcut=False
  )
  assert bare['ood'] is None
  assert any('launch.fit_ood' in n for n in bare['metrics']['notes'])


def test_fit_ood_cli_refits_and_reports(run, tmp_path):
  extra = tmp_path / 'extra'
  material.write_set(extra, 'noise', 4, 48)
  out = tmp_path / 'eval'
  proc = train_helpers.run_cli(
    'launch.fit_ood',
    *[
      '--workdir',
      run,
      '--refit',
      '--per_set',
      '6',
      '--ood_dir',
      f'more_noise={extra}',
      '--out',
      str(out),
    ],
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| more_noise | folder | 4 |' in proc.stdout and 'Fitted score' in proc.stdout
  rep = json.loads((out / 'ood_report.json').read_text())
  assert rep['in_distribution']['n'] == 6 and rep['per_set'] == 6
  assert {s['name']: s['n'] for s in rep['sets']}['text'] == 6
  bad = train_helpers.run_cli('launch.fit_ood', '--workdir', run, '--ood_dir', 'oops', timeout=300)
  assert bad.returncode == 2 and 'NAME=FOLDER' in bad.stderr


@pytest.mark.skipif(not material.CXR_EVAL.is_dir(), reason=material.NO_SHARED)
def test_real_films_pass_the_input_checks():
  """The checks' false alarms on real films: none of 300 cxr_eval films is flagged."""
  paths = material.real_films(material.CXR_EVAL, 300)
  flagged = [(p, input_checks.inspect_file(p, image_size=112).reasons) for p in paths]
  assert [f for f in flagged if f[1]] == []
  assert images.load_grey(paths[0]).shape == (224, 224)


def test_auroc_ranks_check_flagged_pictures_first():
  inside, outside = np.array([0.1, 0.2]), np.array([0.05, 0.3])
  assert ood_eval._auroc(inside, outside) == 0.5  # pylint: disable=protected-access
  flagged = np.array([True, False])
  with_checks = ood_eval._with_checks(outside, flagged, 0.3)  # pylint: disable=protected-access
  assert ood_eval._auroc(inside, with_checks) == 1.0  # pylint: disable=protected-access
  assert 'could not be fitted: ValueError: empty' in ood_eval.markdown(
    {'error': 'ValueError: empty'}
  )
