"""Tests for the evaluation CLIs (launch.evaluate / predict / gradcam / export_onnx).

Most tests call the library function behind each launcher (evaluate_workdir, predict_workdir,
explain_workdir, export_workdir) in-process on tiny phantom data with
`checkpoint.restore_for_inference` replaced by a small random cnn_bn bundle; one subprocess test
checks the real error path, and a slow test runs the real chain train -> evaluate -> predict.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from jaxcxr import data, models
from jaxcxr.benchmarks import cam_layers
from jaxcxr.data import phantom
from jaxcxr.evaluation import export, folder_eval, gradcam, inference, report, robustness
from jaxcxr.training import checkpoint
from tests import train_helpers, warm
from tests.test_gradcam import numpy_variables

REPO = Path(__file__).resolve().parents[1]


def _config(data_dir):
  c = tiny.get_config()
  with c.unlocked():
    c.data.data_dir = str(data_dir)
  return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(bundle, handle): prepared 32 px phantom data (6 test images) and a random cnn_bn."""
  cfg = _config(tmp_path_factory.mktemp('data'))
  handle = data.prepare(cfg.data, progress=False)
  module = models.build('cnn_bn', 3, widths=(8, 16))
  variables = numpy_variables(module, (1, 32, 32, 3), seed=4)
  bundle = checkpoint.InferenceBundle(cfg, module, variables, handle.class_names, 32, 7)
  return bundle, handle


@pytest.fixture
def workdir(setup, tmp_path, monkeypatch):
  bundle, _ = setup
  calls = []

  def restore(workdir, which='best'):
    calls.append((workdir, which))
    return bundle

  monkeypatch.setattr(checkpoint, 'restore_for_inference', restore)
  rows = [
    {'kind': 'train', 'step': 1, 'loss': 1.2},
    {
      'kind': 'epoch',
      'step': 5,
      'epoch': 1,
      'train_loss': 1.1,
      'val_loss': 1.0,
      'val_accuracy': 0.5,
      'learning_rate': 1e-3,
    },
    {
      'kind': 'epoch',
      'step': 10,
      'epoch': 2,
      'train_loss': 0.9,
      'val_loss': 0.95,
      'val_accuracy': 0.6,
      'learning_rate': 1e-4,
    },
  ]
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  return str(tmp_path)


def _direct_probs(bundle, handle, split):
  """Reference: every record of `split` through make_predict_fn, no loader."""
  source = handle.source(split)
  images = np.stack([np.asarray(source[i]['image']) for i in range(len(source))])
  labels = np.array([int(source[i]['label']) for i in range(len(source))])
  predict = inference.make_predict_fn(bundle.module, bundle.variables)
  return labels, np.asarray(predict(images[..., None] if images.ndim == 3 else images))


def test_evaluate_run(setup, workdir):
  bundle, handle = setup
  result = report.evaluate_workdir(workdir, 'test', bootstrap=50)
  out = Path(workdir) / 'eval_test'
  assert result['out_dir'] == str(out)
  for name in (
    'report.json',
    'report.md',
    'confusion_matrix.png',
    'roc_curves.png',
    'reliability_diagram.png',
    'training_curves.png',
  ):
    assert (out / name).exists(), name
  labels, probs = _direct_probs(bundle, handle, 'test')
  m = json.loads((out / 'report.json').read_text())['metrics']
  assert m['num_examples'] == handle.num_examples['test'] == 6
  assert np.sum(m['confusion_matrix']) == 6
  assert m['accuracy'] == pytest.approx(np.mean(probs.argmax(1) == labels))
  assert [sum(r) for r in m['confusion_matrix']] == np.bincount(labels, minlength=3).tolist()
  assert m['ci95']['n_bootstrap'] == 50


def test_predict_files_and_split_agree(setup, workdir, tmp_path):
  bundle, handle = setup
  names = handle.filenames('test')
  files = [os.path.join(handle.phantom_dir, n) for n in names]
  bad = tmp_path / 'broken.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\nnope')
  out_files = str(tmp_path / 'files.csv')
  result = inference.predict_workdir(
    workdir, out_files, images=files + [str(bad)], leaderboard_labels=True, batch_size=4
  )
  assert result['rows'] == 6 and [p for p, _ in result['failed']] == [str(bad)]
  with open(out_files) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
    'file',
    'predicted_label',
    'prob_COVID',
    'prob_Normal',
    'prob_Viral Pneumonia',
    'leaderboard_label',
    'ood_score',
    'in_distribution',
    'ood_reason',
  ]  # tests/test_ood.py: the OOD ones
  assert [r['file'] for r in rows] == files
  lb = {'COVID': 'COVID', 'Normal': 'NORMAL', 'Viral Pneumonia': 'PNEUMONIA'}
  for r in rows:
    p = [float(r[f'prob_{c}']) for c in bundle.class_names]
    assert sum(p) == pytest.approx(1.0, abs=1e-5)
    assert r['predicted_label'] == bundle.class_names[int(np.argmax(p))]
    assert r['leaderboard_label'] == lb[r['predicted_label']]

  out_split = str(tmp_path / 'split.csv')
  assert inference.predict_workdir(workdir, out_split, split='test')['rows'] == 6
  with open(out_split) as f:
    split_rows = list(csv.DictReader(f))
  assert [r['file'] for r in split_rows] == names
  labels, _ = _direct_probs(bundle, handle, 'test')
  assert [r['true_label'] for r in split_rows] == [bundle.class_names[i] for i in labels]
  # The file path (decode + resize) and the prepared-record path give the same probabilities.
  for a, b in zip(rows, split_rows, strict=True):
    for c in bundle.class_names:
      assert float(a[f'prob_{c}']) == pytest.approx(float(b[f'prob_{c}']), abs=1e-5)

  with pytest.raises(ValueError, match='either --images'):
    inference.predict_workdir(workdir, out_split, images=files, split='test')


def test_gradcam_images_and_split(setup, workdir, tmp_path, monkeypatch):
  bundle, handle = setup
  files = [os.path.join(handle.phantom_dir, n) for n in handle.filenames('test')[:3]]
  out = tmp_path / 'cams'
  missing = str(tmp_path / 'missing.png')
  result = gradcam.explain_workdir(
    workdir, str(out), images=files + [missing], target='Normal', batch_size=2
  )
  assert len(result['written']) == 3 and len(result['failed']) == 1
  with open(out / 'cams.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['target_label'] for r in rows] == ['Normal'] * 3
  # Panels: the 32 px source beside its overlay, enlarged x7 (nearest) to >= 200 px, under a header.
  panel = np.asarray(Image.open(out / rows[0]['overlay']))
  assert panel.shape[1:] == (2 * 32 * 7, 3) and panel.dtype == np.uint8
  source = np.asarray(Image.open(files[0]).convert('L'))
  np.testing.assert_array_equal(panel[-32 * 7 :, : 32 * 7 : 7, 0], source.repeat(7, 0))

  # The pointing game, recomputed here: the test split's lesion masks (from the phantom folder),
  # the true-class maps and an own argmax-in-mask. The random model's maps miss every lesion, so
  # the maps of three of the four lesion films are planted (some mispredicted: their true-class
  # maps are a second pass): the true class's map peaks inside the lesion, any other outside it.
  greys, labels, index = gradcam.split_images(bundle.config.data, handle, 'test')
  names = handle.filenames('test')
  masks = np.stack([phantom.load_lesion_mask(handle.phantom_dir, names[i], 32) for i in index])
  lesion = [i for i in range(len(index)) if not names[index[i]].startswith('Normal/')]
  assert len(index) == 6 and len(lesion) == 4  # 2 COVID + 2 viral pneumonia films have lesions
  assert all(masks[i].any() == (i in lesion) for i in range(len(index)))
  real_cams = gradcam.cams_uint8
  true_cams, probs, _ = real_cams(
    bundle.module, bundle.variables, greys, labels, method='gradcam++', batch_size=4
  )
  planted = lesion[:3]
  assert (probs[planted].argmax(1) != labels[planted]).any()  # the second pass is exercised

  def planted_map(i, target):
    peak = np.flatnonzero(masks[i] if target == labels[i] else ~masks[i])[0]
    cam = np.zeros((32, 32), np.float32)
    cam.flat[peak] = 1.0
    return cam

  def cams_uint8(module, variables, images, target=-1, **kwargs):
    cams, p, targets = real_cams(module, variables, images, target, **kwargs)
    cams = np.array(cams)
    for j, image in enumerate(images):
      i = next((i for i in planted if np.array_equal(greys[i], image)), None)
      if i is not None:
        cams[j] = planted_map(i, targets[j])
    return cams, p, targets

  monkeypatch.setattr(gradcam, 'cams_uint8', cams_uint8)
  for i in planted:
    true_cams[i] = planted_map(i, labels[i])
  hits = [bool(masks[i].flat[np.argmax(true_cams[i])]) for i in lesion]
  assert hits == [True, True, True, False]  # the planted three; the random model's map misses

  grid = gradcam.explain_workdir(
    workdir, str(out), split='test', method='gradcam++', per_class=1, batch_size=4
  )
  assert os.path.exists(grid['written'][0]) and grid['written'][0].endswith('gradcampp.png')
  panels = [p for p in grid['written'][1:] if os.path.basename(p).startswith('test_')]
  shown = sum(len(v) for kinds in grid['shown'].values() for v in kinds.values())
  assert len(panels) == shown >= 1 and all(os.path.exists(p) for p in panels)
  assert grid['pointing_game_images'] == 4
  assert grid['pointing_game'] == np.mean(hits) == 0.75
  with pytest.raises(ValueError, match='not a class'):
    gradcam.explain_workdir(workdir, str(out), images=files, target='Cat')


def test_export_onnx_run(workdir, tmp_path):
  pytest.importorskip('jax2onnx')
  result = export.export_workdir(workdir, str(tmp_path / 'export'))
  assert result['max_abs_diff'] < 1e-4
  assert result['unmapped_classes'] == []
  for name in ('model.onnx', 'preprocessing.json', 'preprocessor.py'):
    assert (tmp_path / 'export' / name).exists()
  spec = json.loads((tmp_path / 'export' / 'preprocessing.json').read_text())
  assert spec['input_shape'] == [-1, 32, 32, 3]
  assert spec['leaderboard_labels'] == ['COVID', 'NORMAL', 'PNEUMONIA']


def _hospital_folder(root: Path, handle) -> tuple[Path, dict]:
  """The 12 validation and test phantoms in a Kaggle layout as a new hospital might spell it:
  covid/ (films directly inside), Normal/images/, VIRAL PNEUMONIA/; plus Lung_Opacity/ (no class
  of a 3-class model), masks/ inside a class folder, a hidden file and two unreadable files.

  Returns:
    (folder, {relative name of each readable film: its source file}).
  """
  where = {'COVID': 'covid', 'Normal': 'Normal/images', 'Viral Pneumonia': 'VIRAL PNEUMONIA'}
  films = {}
  for split in ('validation', 'test'):
    for name in handle.filenames(split):
      cls, _, base = name.split('/')
      rel = f'{where[cls]}/{split}-{base}'
      (root / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(Path(handle.phantom_dir) / name, root / rel)
      films[rel] = Path(handle.phantom_dir) / name
  (root / 'Lung_Opacity').mkdir()
  shutil.copyfile(next(iter(films.values())), root / 'Lung_Opacity' / 'LO-1.png')
  (root / 'covid' / 'masks').mkdir()
  shutil.copyfile(next(iter(films.values())), root / 'covid' / 'masks' / 'm.png')
  (root / 'Normal' / 'images' / '.DS_Store').write_bytes(b'\0')
  (root / 'covid' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnope')
  (root / 'covid' / 'notes.txt').write_text('reading list')
  return root, dict(sorted(films.items()))


def test_evaluate_folder(setup, workdir, tmp_path):
  bundle, handle = setup
  folder, films = _hospital_folder(tmp_path / 'hospital', handle)
  result = folder_eval.evaluate_folder(workdir, str(folder), bootstrap=50, batch_size=4)
  out = Path(workdir) / 'eval_folder_hospital'
  assert result['out_dir'] == str(out) and result['name'] == 'hospital'
  for name in (
    'report.json',
    'report.md',
    'confusion_matrix.png',
    'roc_curves.png',
    'reliability_diagram.png',
    'training_curves.png',
    'predictions.csv',
    'unreadable.csv',
  ):
    assert (out / name).exists(), name
  # Unreadable files are listed with the reason and counted, not fatal.
  assert [n for n, _ in result['unreadable']] == ['covid/broken.png', 'covid/notes.txt']
  assert 'not an image' in result['unreadable'][1][1]
  with open(out / 'unreadable.csv') as f:
    assert [r['file'] for r in csv.DictReader(f)] == ['covid/broken.png', 'covid/notes.txt']
  assert result['files_found'] == 14 and result['ignored_folders'] == ['Lung_Opacity']
  rep = json.loads((out / 'report.json').read_text())
  m = rep['metrics']
  assert m['num_examples'] == 12 and rep['extra']['unreadable_files'] == 2
  assert rep['extra']['eval_dir'] == str(folder.resolve())
  # Labels come from the folders: the confusion matrix rows are the per-class film counts.
  truth = [f.parts[-3] for f in films.values()]
  assert [sum(r) for r in m['confusion_matrix']] == [truth.count(c) for c in bundle.class_names]
  assert any(n.startswith('Not scored: Lung_Opacity/ (no class of this model') for n in m['notes'])
  assert any('2 unreadable file(s)' in n for n in m['notes'])
  # The probabilities are launch.predict's for the same files (same decode, resizes, model).
  with open(out / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['file'] for r in rows) == list(films)
  ref, paths, _ = inference.predict_files(
    inference.make_predict_fn(bundle.module, bundle.variables),
    [str(folder / r['file']) for r in rows],
    32,
    4,
  )
  assert len(paths) == 12
  got = np.array([[float(r[f'prob_{c}']) for c in bundle.class_names] for r in rows])
  np.testing.assert_allclose(got, ref, atol=1e-5)
  assert [r['true_label'] for r in rows] == [films[r['file']].parts[-3] for r in rows]
  # Shortcut indicator over all 12 films, with source-resolution panels.
  ind = rep['shortcut']['indicator']
  assert sum(r['n'] for r in ind['per_class'].values()) == 12
  assert rep['shortcut']['figures'] and all((out / p).exists() for p in rep['shortcut']['figures'])
  assert '## Shortcut indicator' in (out / 'report.md').read_text()
  # A class without a folder is left out (and noted in the report); the others are scored.
  shutil.rmtree(folder / 'VIRAL PNEUMONIA')
  two = folder_eval.scan_labelled_folder(folder, bundle.class_names)
  assert two.missing == ['Viral Pneumonia'] and len(two.files) == 14 - truth.count(
    'Viral Pneumonia'
  )
  assert two.class_folders == {'COVID': 'covid', 'Normal': 'Normal/images'}


def test_evaluate_folder_errors(workdir, tmp_path):
  films = tmp_path / 'films'
  (films / 'xrays').mkdir(parents=True)
  with pytest.raises(FileNotFoundError) as e:
    folder_eval.evaluate_folder(workdir, str(films))
  msg = str(e.value)
  assert f"{films.resolve()} has no class subfolders (found: ['xrays'])" in msg
  assert 'COVID/, Normal/, Viral Pneumonia/' in msg
  with pytest.raises(FileNotFoundError, match='is not a folder'):
    folder_eval.evaluate_folder(workdir, str(tmp_path / 'nowhere'))
  (films / 'Normal').mkdir()
  (films / 'Normal' / 'a.png').write_text('not a picture')
  with pytest.raises(ValueError, match=r'None of the 1 files .* could be read'):
    folder_eval.evaluate_folder(workdir, str(films))


def _cli(module, *args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  return warm.run_module(module, args, env=env, cwd=REPO, timeout=timeout)


def test_evaluate_cli_without_checkpoint(tmp_path):
  proc = _cli('launch.evaluate', '--workdir', str(tmp_path))
  assert proc.returncode == 2, proc.stderr
  assert 'config.json' in proc.stderr and 'launch.train' in proc.stderr


@pytest.mark.slow
def test_train_then_evaluate_and_predict_cli(setup, tmp_path):
  """The real chain: launch.train (tiny) -> launch.evaluate CLI -> predict_workdir (in-process,
  real `restore_for_inference`)."""
  bundle, _ = setup
  data_dir = bundle.config.data.data_dir
  work = tmp_path / 'run'
  proc = _cli(
    'launch.train',
    '--config',
    str(REPO / 'configs' / 'tiny.py'),
    '--workdir',
    str(work),
    f'--config.data.data_dir={data_dir}',
    '--config.train.num_epochs=1',
    # The run's own report is not read here (launch.evaluate writes and checks its own).
    *train_helpers.config_flags(train_helpers.LEAN_REPORT),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _cli(
    'launch.evaluate',
    '--workdir',
    str(work),
    '--split',
    'validation',
    '--bootstrap',
    '20',
    '--shortcut',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| **macro** |' in proc.stdout and 'validation: n=6 accuracy=' in proc.stdout
  report = json.loads((work / 'eval_validation' / 'report.json').read_text())
  assert report['metrics']['num_examples'] == 6 and report['extra']['checkpoint'] == 'best'
  # --shortcut adds the indicator (tiny.py's config has it off) and its source-resolution panels.
  assert report['shortcut']['indicator'] and report['shortcut']['figures']
  assert all((work / 'eval_validation' / p).exists() for p in report['shortcut']['figures'])
  assert (work / 'eval_validation' / 'training_curves.png').exists()
  # The map is stated (tiny.py: cnn_bn at 32 px, last stage 4x4, so conv3's 8x8), and the
  # robustness section scores the same films under every perturbation.
  assert report['shortcut']['cam_map'] == 'conv3 8x8 at 32 px'
  assert report['shortcut']['indicator']['map_side'] == 8
  assert set(report['robustness']['perturbations']) == set(robustness.PERTURBATIONS)
  assert report['robustness']['images'] == 6
  assert (
    'shortcut indicator: ' in proc.stdout and '(Grad-CAM map: conv3 8x8 at 32 px)' in proc.stdout
  )
  assert 'robustness: clean macro-F1 ' in proc.stdout
  md = (work / 'eval_validation' / 'report.md').read_text()
  assert '## Robustness to non-lung changes' in md and 'Grad-CAM map: conv3 8x8 at 32 px.' in md
  # A labelled folder, one command: the same report for a new hospital's films.
  _, handle = setup
  folder, _ = _hospital_folder(tmp_path / 'hospital', handle)
  proc = _cli(
    'launch.evaluate',
    '--workdir',
    str(work),
    '--eval_dir',
    str(folder),
    '--bootstrap',
    '20',
    '--nofigures',  # the report without its PNG figures (its sections and panels as before)
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'hospital: n=12 accuracy=' in proc.stdout and 'shortcut indicator: ' in proc.stdout
  assert 'unreadable: covid/notes.txt: ' in proc.stderr
  assert (work / 'eval_folder_hospital' / 'shortcut').is_dir()
  folder_report = json.loads((work / 'eval_folder_hospital' / 'report.json').read_text())
  assert folder_report['robustness']['images'] == 12
  assert folder_report['figures'] == {}
  assert not list((work / 'eval_folder_hospital').glob('*.png'))
  assert folder_report['shortcut']['cam_map'] == 'conv3 8x8 at 32 px'
  assert 'robustness: clean macro-F1 ' in proc.stdout
  proc = _cli(
    'launch.evaluate', '--workdir', str(work), '--eval_dir', str(folder), '--split', 'test'
  )
  assert proc.returncode == 2 and 'not both' in proc.stderr
  result = inference.predict_workdir(
    str(work), str(tmp_path / 'p.csv'), split='test', leaderboard_labels=True
  )
  assert result['rows'] == 6 and not result['failed']
  with open(tmp_path / 'p.csv') as f:
    rows = list(csv.DictReader(f))
  assert {r['leaderboard_label'] for r in rows} <= {'COVID', 'NORMAL', 'PNEUMONIA'}


def test_benchmark_cam_layers(setup, workdir, tmp_path):
  """launch.benchmark_cam's figures: map sizes per layer, localisation as launch.gradcam's split
  mode computes it, the indicator over every film; on a labelled folder, the indicator alone."""
  _, handle = setup
  result = cam_layers.measure_workdir(workdir, layers=('last', 'conv1'), batch_size=4)
  assert result['images'] == 6 and result['model'] == 'cnn_bn' and result['image_size'] == 32
  last, conv1 = result['rows']
  assert (last['map'], last['map_side']) == ('last 16x16 at 32 px', 16)
  assert (conv1['map'], conv1['map_side']) == ('conv1 32x32 at 32 px', 32)
  assert last['lesion_images'] == 4  # 2 COVID + 2 viral pneumonia test films
  for row in (last, conv1):
    grid = gradcam.explain_workdir(
      workdir, str(tmp_path / row['layer']), split='test', batch_size=4, layer=row['layer']
    )
    assert row['pointing_game'] == grid['pointing_game']
    assert row['energy_in_mask'] == pytest.approx(grid['energy_in_mask'], abs=1e-6)
    assert grid['cam_map'] == row['map']
    per_class = row['indicator']['per_class'].values()
    assert sum(r['n'] + r['n_empty'] for r in per_class) == 6
  assert '| last | last 16x16 at 32 px |' in cam_layers.table([result])
  folder, _ = _hospital_folder(tmp_path / 'hospital', handle)
  real = cam_layers.measure_folder(workdir, str(folder), layers=('last',), batch_size=4)
  assert real['images'] == 12 and np.isnan(real['rows'][0]['pointing_game'])
  assert real['rows'][0]['indicator']['map_side'] == 16
