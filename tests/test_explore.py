"""jaxcxr.tools.explore and .duplicates, launch.explore: the numbers of the exploration report.

The main fixture is an imbalanced Kaggle-layout folder of 48 px phantoms (COVID 120, Normal 480,
Viral Pneumonia 48) with planted files: exact copies (byte copy, RGB re-save), near copies (+1
brightness x4, JPEG re-encode), a cross-class exact copy (label conflict), and RGBA / 16-bit /
odd-size files of distinct pictures.
"""

import io
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jaxcxr.data as data_lib
from configs import base
from jaxcxr.data import lookalikes, phantom, sampling
from jaxcxr.tools import duplicates, explore
from jaxcxr.training import errors
from tests import test_lookalikes, warm

CXR_DEV = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'cxr_dev'
CLASSES = ('COVID', 'Normal', 'Viral Pneumonia')
COUNTS = {'COVID': 120, 'Normal': 480, 'Viral Pneumonia': 48}
SIZE = 48
BRIGHT = (7, 11, 12, 13)  # Normal-i gets a +1 brightness copy (several: more groups to place)
NEAR = [{f'Normal-{i}.png', f'Normal-{i}-bright.png'} for i in BRIGHT] + [
  {'Normal-9.png', 'Normal-9-reenc.jpg'}
]


def _data_cfg(data_dir, **kw):
  d = base.get_data_config()
  d.data_dir = str(data_dir)
  d.num_workers = 0
  d.image_size = SIZE
  for k, v in kw.items():
    setattr(d, k, v)
  return d


def _phantoms(label: int, n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng([seed, label])
  return phantom.render(label, n, image_size=SIZE, rng=rng)['image']


def _save(path: Path, image, **kw) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kw)


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  """(folder, {planted role: relative name}) of the imbalanced folder with planted files."""
  root = tmp_path_factory.mktemp('explore') / 'kaggle'
  for k, name in enumerate(CLASSES):
    for i, image in enumerate(_phantoms(k, COUNTS[name], seed=1), 1):
      _save(root / name / 'images' / f'{name}-{i}.png', image)
  extra = _phantoms(0, 3, seed=2)  # pictures that appear nowhere else
  cov, nor, vir = (root / c / 'images' for c in CLASSES)
  shutil.copyfile(cov / 'COVID-1.png', cov / 'COVID-1-copy.png')
  _save(cov / 'COVID-1-rgb.png', Image.open(cov / 'COVID-1.png').convert('RGB'))
  for i in BRIGHT:
    bright = np.asarray(Image.open(nor / f'Normal-{i}.png')).astype(np.int16) + 1
    _save(nor / f'Normal-{i}-bright.png', np.clip(bright, 0, 255).astype(np.uint8))
  buf = io.BytesIO()
  Image.open(nor / 'Normal-9.png').save(buf, 'JPEG', quality=90)
  (nor / 'Normal-9-reenc.jpg').write_bytes(buf.getvalue())
  shutil.copyfile(nor / 'Normal-5.png', vir / 'Normal-5-conflict.png')
  _save(cov / 'COVID-rgba.png', Image.fromarray(extra[0]).convert('RGBA'))
  _save(nor / 'Normal-16bit.png', extra[1].astype(np.uint16) * 257)
  _save(vir / 'VP-odd.png', Image.fromarray(extra[2]).resize((40, 33), Image.BILINEAR))
  return root


@pytest.fixture(scope='module')
def folder_report(planted, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('explore_tfds')
  cfg = _data_cfg(
    data_dir, source='folder', manual_dir=str(planted), on_bad_image='skip', stored_size=SIZE
  )
  out = tmp_path_factory.mktemp('explore_out')
  report = explore.explore(cfg, out, samples=3, aug_draws=2, progress=False)
  return cfg, data_lib.prepare(cfg, progress=False), report, out


def test_counts_equal_the_handle(folder_report):
  _, handle, report, _ = folder_report
  for split in sampling.SPLITS:
    assert [report['split_counts'][split][c] for c in CLASSES] == handle.class_counts[split]
  assert report['num_examples'] == handle.num_examples
  assert report['inspected_per_class'] == {'COVID': 123, 'Normal': 486, 'Viral Pneumonia': 50}
  assert report['prepare']['files_found'] == 659
  assert report['prepare']['exact_copies_dropped'] == 2
  assert report['unusable'] == []
  # 659 files - 2 dropped copies - 2 conflicting copies = 655 records.
  assert sum(handle.num_examples.values()) == 655


def test_epoch_draws_none_is_the_split_oversample_is_balanced(folder_report):
  _, handle, report, _ = folder_report
  ep = report['epoch']
  n = handle.num_examples['train']
  assert ep['num_draws'] == n and ep['matches_sampling']
  assert [ep['none'][c] for c in CLASSES] == handle.class_counts['train']
  assert ep['none_distinct'] == ep['none']  # a permutation: every record once
  assert sum(ep['oversample'].values()) == n
  # Oversampling draws a class with probability 1/3 each time, so a class count is
  # Binomial(N, 1/3): its share has std sqrt(2/9/N) (0.022 at N = 459). 4 std bounds a fixed
  # seed's deviation at P ~ 2e-4 over the three classes, and the none shares (0.19 / 0.74 / 0.08)
  # fall outside it, so the check tells the two modes apart.
  tol = 4 * math.sqrt(2 / 9 / n)
  shares = np.array([ep['oversample'][c] for c in CLASSES]) / n
  np.testing.assert_allclose(shares, 1 / 3, atol=tol)
  assert ep['none']['Normal'] / n > 1 / 3 + tol
  # With replacement, fewer distinct records than draws for the over-drawn minority classes.
  assert ep['oversample_distinct']['Viral Pneumonia'] < ep['oversample']['Viral Pneumonia']
  assert ep['oversample_distinct']['Viral Pneumonia'] <= handle.class_counts['train'][2]


def _groups(report):
  return {
    frozenset(m['file'].split('/')[-1] for m in g['members']): g
    for g in report['duplicates']['groups']
  }


def test_planted_duplicates_found_and_nothing_else(folder_report):
  _, handle, report, _ = folder_report
  groups = _groups(report)
  assert set(groups) == {
    frozenset({'COVID-1.png', 'COVID-1-copy.png', 'COVID-1-rgb.png'}),
    frozenset({'Normal-5.png', 'Normal-5-conflict.png'}),
    *map(frozenset, NEAR),
  }
  exact = groups[frozenset({'COVID-1.png', 'COVID-1-copy.png', 'COVID-1-rgb.png'})]
  assert exact['kind'] == 'exact' and not exact['cross_class']
  assert [m['distance'] for m in exact['members']] == [0, 0, 0]
  used = [m for m in exact['members'] if m['split'] != 'not used']
  assert [m['file'] for m in used] == ['COVID/images/COVID-1-copy.png']  # prepare keeps the first
  assert all(
    'exact copy of COVID/images/COVID-1-copy.png' in m['note']
    for m in exact['members']
    if m not in used
  )
  conflict = groups[frozenset({'Normal-5.png', 'Normal-5-conflict.png'})]
  assert conflict['kind'] == 'exact' and conflict['cross_class']
  assert {m['split'] for m in conflict['members']} == {'not used'}
  split_of = {n: s for s in sampling.SPLITS for n in handle.filenames(s)}
  for key in NEAR:
    g = groups[frozenset(key)]
    assert g['kind'] == 'near' and not g['cross_class']
    assert max(m['distance'] for m in g['members']) <= report['duplicates']['threshold_bits']
    assert [m['split'] for m in g['members']] == [split_of[m['file']] for m in g['members']]
    assert g['cross_split'] == (len({m['split'] for m in g['members']}) > 1)
  d = report['duplicates']
  assert (d['num_groups'], d['exact_groups'], d['near_groups'], d['cross_class_groups']) == (
    7,
    2,
    5,
    1,
  )
  # Prepare kept each near group in one split (film by film, these seeds put some of them in two:
  # tests/data/test_builder.py), and its own groups are the ones explore finds.
  assert d['cross_split_groups'] == 0 and not any(g['cross_split'] for g in d['groups'])
  look = handle.metadata['lookalikes']
  assert {frozenset(n.split('/')[-1] for n in g) for g in look['groups']} == set(
    map(frozenset, NEAR)
  )


def test_size_mode_table_counts_planted_files(folder_report):
  _, _, report, _ = folder_report
  rows = report['sizes_modes']
  assert sum(r['count'] for r in rows) == 659

  def count(**kw):
    return sum(r['count'] for r in rows if all(r[k] == v for k, v in kw.items()))

  assert count(mode='RGBA') == 1 and count(mode='RGBA', **{'class': 'COVID'}) == 1
  assert count(mode='I;16') == 1 and count(mode='I;16', **{'class': 'Normal'}) == 1
  assert count(size='40x33') == 1 and count(size='40x33', **{'class': 'Viral Pneumonia'}) == 1
  assert count(mode='RGB') == 1 and count(format='JPEG') == 1
  assert count(mode='L', size='48x48') == 659 - 4  # the JPEG is L 48x48 too
  assert report['modes'] == {'L': 656, 'RGB': 1, 'RGBA': 1, 'I;16': 1}


def test_markdown_references_every_figure(folder_report):
  _, _, report, out = folder_report
  md = (out / 'explore.md').read_text()
  referenced = set(re.findall(r'!\[[^\]]*\]\(([^)]+)\)', md))
  on_disk = {p.name for p in out.glob('*.png')}
  assert referenced == on_disk == set(report['figures'])
  assert on_disk == set(explore.FIGURES)  # duplicates exist here, so every figure is drawn
  for c in CLASSES:
    assert f'| {c} |' in md
  assert 'Normal-9-reenc.jpg' in md and '(cross-class)' in md


def test_prepared_records_mode(folder_report, tmp_path):
  cfg, handle, _, _ = folder_report
  d = _data_cfg(cfg.data_dir, source='folder')  # no manual_dir: the prepared records
  d.image_size = 32  # model input may differ from the stored side; settings come from metadata
  d.stored_size = 96  # ... as does the stored side: explore reads the prepared one back
  report = explore.explore(d, tmp_path, samples=2, aug_draws=1, progress=False)
  assert d.stored_size == 96 and report['dataset']['stored_size'] == SIZE
  assert report['dataset']['inspected'] == 'records'
  assert report['split_counts'] == {
    s: dict(zip(CLASSES, handle.class_counts[s], strict=True)) for s in sampling.SPLITS
  }
  assert report['sizes_modes'] == [
    {'class': c, 'format': 'stored', 'mode': 'L', 'size': '48x48', 'count': n}
    for c, n in zip(
      CLASSES, np.sum([handle.class_counts[s] for s in sampling.SPLITS], 0), strict=True
    )
  ]
  # Exact copies were dropped by prepare; the two near pairs are still there.
  assert set(_groups(report)) == set(map(frozenset, NEAR))
  with pytest.raises(FileNotFoundError, match='No prepared 3class dataset'):
    explore.fill_prepared_settings(_data_cfg(tmp_path / 'empty'))


def test_augmentation_rows_follow_the_loader_transform(folder_report):
  cfg, handle, _, _ = folder_report
  rows = explore.augmentation_rows(cfg, handle, draws=3, seed=0)
  assert [r[0].split('\n')[0] for r in rows] == list(CLASSES)
  for _, cells in rows:
    images = [np.asarray(c[0]).squeeze() for c in cells]
    assert [i.shape for i in images] == [(SIZE, SIZE)] * 5
    assert not np.array_equal(images[2], images[3])  # independent draws differ
  off = cfg.copy_and_resolve_references()
  off.augment.enabled = False  # the loader then only resizes: every draw equals the eval input
  for _, cells in explore.augmentation_rows(off, handle, draws=2, seed=0):
    assert all(np.array_equal(c[0], cells[1][0]) for c in cells[2:])


def test_closest_pairs_on_hand_made_hashes():
  groups, nearest, partner = lookalikes.near_duplicates(
    test_lookalikes.hand_made_hashes(), ['a', 'b', 'c', 'd'], 8, block=2
  )
  assert groups == [[0, 1, 2]]  # tests/test_lookalikes.py has the grouping itself
  assert duplicates.closest_pairs(nearest, partner, groups) == [(2, 3, 246)]
  assert duplicates.closest_pairs(nearest, partner, []) == [(0, 1, 3), (1, 2, 7), (2, 3, 246)]


def _cli(*argv):
  """Runs launch.explore in a subprocess (absl launchers define clashing flags in one process)."""
  repo = Path(__file__).resolve().parents[1]
  env = {**os.environ, 'PYTHONPATH': str(repo), 'JAX_PLATFORMS': 'cpu'}
  return warm.run_module('launch.explore', argv, env=env, cwd=repo, timeout=600)


def test_cli_phantom(tmp_path):
  tiny = ['--config', 'configs/tiny.py', f'--config.data.data_dir={tmp_path / "tfds"}']
  r = _cli(
    *tiny,
    '--config.data.phantom.num_per_class=12',
    '--samples=2',
    '--aug_draws=2',
    f'--out={tmp_path / "out"}',
  )
  assert r.returncode == 0, r.stderr
  assert "train: {'COVID': 8, 'Normal': 8, 'Viral Pneumonia': 8}" in r.stdout
  assert 'duplicate groups: 0' in r.stdout
  assert (tmp_path / 'out' / 'explore.md').exists() and (tmp_path / 'out' / 'samples.png').exists()
  r = _cli(f'--out={tmp_path / "x"}')
  assert r.returncode != 0 and '--config' in r.stderr
  r = _cli(*tiny, '--config.data.source=folder', f'--out={tmp_path / "x"}')
  assert r.returncode == errors.EXIT_USAGE and 'Traceback' not in r.stderr
  assert 'No prepared 3class dataset' in r.stderr and '--config.data.manual_dir' in r.stderr


@pytest.mark.shared_data
def test_cxr_dev(tmp_path):
  if not CXR_DEV.is_dir():
    pytest.skip(f'real dev set not found at {CXR_DEV} (../shared/data/cxr_dev beside the repo)')
  cfg = _data_cfg(tmp_path / 'tfds', source='folder', manual_dir=str(CXR_DEV), image_size=64)
  report = explore.explore(cfg, tmp_path / 'out', samples=2, aug_draws=2, progress=False)
  assert report['inspected_per_class'] == dict.fromkeys(CLASSES, 400)
  assert report['split_counts'] == {
    'train': dict.fromkeys(CLASSES, 280),
    'validation': dict.fromkeys(CLASSES, 60),
    'test': dict.fromkeys(CLASSES, 60),
  }
  assert report['unusable'] == [] and report['prepare']['exact_copies_dropped'] == 0
  assert report['sizes'] == {'224x224': 1200}
  assert report['epoch']['none'] == dict.fromkeys(CLASSES, 280)
  assert sum(report['epoch']['oversample'].values()) == 840
  assert report['duplicates']['exact_groups'] == 0
