"""TFDS builder + prepare(): splits, dedupe, metadata, mismatch detection, bad input."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxcxr.data as data_lib
from jaxcxr.data import builder, dataset, folders, images
from tests import test_lookalikes as looks
from tests.data import helpers

THREE = {'COVID': 10, 'Normal': 10, 'Viral Pneumonia': 10}


def _prepare(tmp_path, folder, **kw):
  cfg = helpers.data_config(tmp_path / 'tfds', source='folder', manual_dir=str(folder), **kw)
  return cfg, data_lib.prepare(cfg, progress=False)


def _all_records(handle, split):
  src = handle.source(split)
  return [src[i] for i in range(len(src))]


def test_prepare_counts_splits_metadata(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE, size=16)
  helpers.save_png(folder / 'COVID' / 'masks' / 'COVID-1.png', np.zeros((4, 4), np.uint8))
  (folder / 'COVID.metadata.xlsx').write_bytes(b'ignored')
  cfg, h = _prepare(tmp_path, folder, val_fraction=0.2, test_fraction=0.2, stored_size=32)
  assert h.name == 'covid19_radiography' and h.class_names == ('COVID', 'Normal', 'Viral Pneumonia')
  assert h.num_classes == 3 and h.stored_size == 32
  assert h.class_counts == {'train': [6, 6, 6], 'validation': [2, 2, 2], 'test': [2, 2, 2]}
  assert h.num_examples == {'train': 18, 'validation': 6, 'test': 6}
  # Metadata is on disk and readable by plain TFDS (no jaxcxr classes needed).
  meta = tfds.builder_from_directory(h.dataset_dir).info.metadata
  assert meta['class_counts']['validation'] == [2, 2, 2]
  assert meta['settings'] == {
    'split_seed': 0,
    'val_fraction': 0.2,
    'test_fraction': 0.2,
    'stored_size': 32,
    'lookalike_threshold': 8,
  }
  assert meta['num_files_found'] == 30 and meta['skipped'] == [] and meta['duplicates'] == []
  assert meta['lookalikes']['num_groups'] == 0  # distinct random pictures
  # Records: uint8 (32, 32), labels match the class folder of the filename.
  recs = _all_records(h, 'train')
  assert all(r['image'].shape == (32, 32) and r['image'].dtype == np.uint8 for r in recs)
  for r, name, label in zip(recs, h.filenames('train'), h.labels('train'), strict=True):
    assert name.split('/')[0] == h.class_names[label] == h.class_names[r['label']]
    assert name.split('/')[1] == 'images'
  # The stored pixels are the file resized the torchvision way.
  src_img = images.load_grey(folder / h.filenames('train')[0])
  np.testing.assert_array_equal(recs[0]['image'], images.resize_grey(src_img, 32))
  # Reuse: a second prepare opens the same data without rebuilding.
  h2 = data_lib.prepare(cfg, progress=False)
  assert h2.dataset_dir == h.dataset_dir and h2.filenames('test') == h.filenames('test')


def test_splits_deterministic_and_duplicates_never_cross(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE, size=16, seed=1)
  rng = np.random.default_rng(9)
  dup = helpers.random_image(rng, 16)
  helpers.save_png(folder / 'COVID' / 'images' / 'COVID-1.png', dup)
  helpers.save_png(folder / 'COVID' / 'images' / 'COVID-2.png', np.stack([dup] * 3, -1))  # RGB
  clash = helpers.random_image(rng, 16)
  helpers.save_png(folder / 'Normal' / 'images' / 'Normal-1.png', clash)
  helpers.save_png(folder / 'Viral Pneumonia' / 'images' / 'Viral Pneumonia-1.png', clash)
  _, h = _prepare(tmp_path, folder)
  m = h.metadata
  assert m['duplicates'] == [['COVID/images/COVID-1.png', 'COVID/images/COVID-2.png']]
  assert m['label_conflicts'] == [
    [
      'Normal/images/Normal-1.png (label 1)',
      'Viral Pneumonia/images/Viral Pneumonia-1.png (label 2)',
    ]
  ]
  assert sum(h.num_examples.values()) == 30 - 1 - 2
  assert [sum(c) for c in zip(*h.class_counts.values(), strict=True)] == [9, 9, 9]
  hashes = {
    s: {images.content_hash(r['image']) for r in _all_records(h, s)}
    for s in ('train', 'validation', 'test')
  }
  assert sum(len(v) for v in hashes.values()) == 27  # all distinct, so none shared by splits
  # Same folder, another data_dir: the same split membership.
  cfg2 = helpers.data_config(tmp_path / 'tfds2', source='folder', manual_dir=str(folder))
  h2 = data_lib.prepare(cfg2, progress=False)
  for s in ('train', 'validation', 'test'):
    assert sorted(h2.filenames(s)) == sorted(h.filenames(s))
  # Another split seed: other membership, same per-class counts.
  cfg3 = helpers.data_config(
    tmp_path / 'tfds3', source='folder', manual_dir=str(folder), split_seed=1
  )
  h3 = data_lib.prepare(cfg3, progress=False)
  assert h3.class_counts == h.class_counts
  assert sorted(h3.filenames('test')) != sorted(h.filenames('test'))


def _lookalike_folder(root):
  """12 smooth 224 px films per class and planted look-alikes (names: what they are)."""
  rng = np.random.default_rng(4)
  for name in THREE:
    for i in range(1, 13):
      helpers.save_png(root / name / 'images' / f'{name}-{i}.png', looks.film(rng, 224))
  cov, nor, vir = (root / name / 'images' for name in THREE)

  def load(path):
    return images.load_grey(path)

  helpers.save_png(cov / 'COVID-1-rescan.png', looks.noised(load(cov / 'COVID-1.png'), 1))
  helpers.save_png(nor / 'Normal-2-rescan.png', looks.noised(load(nor / 'Normal-2.png'), 2))
  helpers.save_png(nor / 'Normal-2-small.png', looks.resampled(load(nor / 'Normal-2.png'), 48))
  helpers.save_png(nor / 'Normal-5-shifted.png', looks.shifted(load(nor / 'Normal-5.png')))
  helpers.save_png(
    vir / 'Viral Pneumonia-3-jpeg.png', looks.jpeg(load(vir / 'Viral Pneumonia-3.png'))
  )
  # An exact copy (dropped) and a near copy of it: the near copy stays with the kept film.
  helpers.save_png(cov / 'COVID-4-copy.png', load(cov / 'COVID-4.png'))
  helpers.save_png(cov / 'COVID-4-rescan.png', looks.noised(load(cov / 'COVID-4.png'), 3))
  # A Normal film with a look-alike in Viral Pneumonia: different labels, kept, one split.
  helpers.save_png(vir / 'Normal-6-as-VP.png', looks.noised(load(nor / 'Normal-6.png'), 4))
  return root


LOOKALIKES = [
  {'COVID-1.png', 'COVID-1-rescan.png'},
  {'Normal-2.png', 'Normal-2-rescan.png', 'Normal-2-small.png'},
  {'Normal-5.png', 'Normal-5-shifted.png'},
  {'Viral Pneumonia-3.png', 'Viral Pneumonia-3-jpeg.png'},
  {'COVID-4-copy.png', 'COVID-4-rescan.png'},  # COVID-4.png: the dropped copy
  {'Normal-6.png', 'Normal-6-as-VP.png'},
]


def _split_of(handle):
  return {n.split('/')[-1]: s for s in ('train', 'validation', 'test') for n in handle.filenames(s)}


def test_lookalikes_kept_in_one_split_and_counted(tmp_path):
  folder = _lookalike_folder(tmp_path / 'kaggle')
  kw = dict(val_fraction=0.2, test_fraction=0.2, stored_size=32)
  _, h = _prepare(tmp_path, folder, **kw)
  look = h.metadata['lookalikes']
  assert {frozenset(n.split('/')[-1] for n in g) for g in look['groups']} == set(
    map(frozenset, LOOKALIKES)
  )
  assert (look['num_groups'], look['num_files'], look['threshold_bits']) == (6, 13, 8)
  assert look['mixed_label_groups'] == [
    [
      'Normal/images/Normal-6.png (Normal)',
      'Viral Pneumonia/images/Normal-6-as-VP.png (Viral Pneumonia)',
    ]
  ]
  assert h.metadata['duplicates'] == [['COVID/images/COVID-4-copy.png', 'COVID/images/COVID-4.png']]
  split_of = _split_of(h)
  for g in LOOKALIKES:
    assert len({split_of[n] for n in g}) == 1, g  # no group spans splits
  # Stratified as without groups: round(n * 0.2) per class in test and validation
  # (COVID 12 + 3 - 1 dropped = 14, Normal 12 + 3 = 15, Viral Pneumonia 12 + 2 = 14).
  assert h.class_counts == {'train': [8, 9, 8], 'validation': [3, 3, 3], 'test': [3, 3, 3]}
  table = dataset.summary_table(h)
  assert (
    'look-alike films kept in one split: 13 films in 6 groups (dHash 16x16 within 8 bits; '
    'groups with different labels: 1)'
  ) in table
  assert 'look-alikes with different labels (kept, one split): Normal/images/Normal-6.png' in table
  # Film by film (lookalike_threshold=-1, version 1.0.0's split) lets some groups straddle splits.
  _, old = _prepare(tmp_path / 'v1', folder, lookalike_threshold=-1, **kw)
  assert old.class_counts == h.class_counts
  assert any(len({_split_of(old)[n] for n in g}) > 1 for g in LOOKALIKES)
  assert 'look-alike films: not grouped' in dataset.summary_table(old)


def _as_version_1_0(handle) -> Path:
  """Renames a prepared dataset's folder to 1.0.0: what the previous jaxcxr left in a data_dir."""
  here = Path(handle.dataset_dir)
  assert here.name == '1.1.0' == str(builder.CovidRadiography.VERSION)
  return here.rename(here.with_name('1.0.0'))


def test_older_version_reused_only_when_its_splits_hold(tmp_path):
  # Without look-alikes, version 1.1.0 splits as 1.0.0 did: the folder is re-prepared quietly.
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE)
  cfg, h = _prepare(tmp_path, folder)
  old_dir = _as_version_1_0(h)
  h2 = data_lib.prepare(cfg, progress=False)
  assert h2.dataset_dir == h.dataset_dir and old_dir.exists()
  for split in ('train', 'validation', 'test'):
    assert h2.filenames(split) == h.filenames(split)
  # A data_dir alone (no manual folder to check the splits against) is refused with the command.
  shutil.rmtree(h2.dataset_dir)
  cfg.manual_dir = ''
  with pytest.raises(ValueError, match='was prepared by an older jaxcxr') as e:
    data_lib.prepare(cfg, progress=False)
  msg = str(e.value)
  assert f'The dataset in {old_dir} was prepared by an older jaxcxr (dataset version 1.0.0)' in msg
  assert 'was not checked' in msg and 'python -m launch.prepare_data' in msg
  assert '--overwrite' in msg

  # With look-alikes the film-by-film split differs: refused, naming how many films move.
  folder = _lookalike_folder(tmp_path / 'kaggle2')
  cfg, v1 = _prepare(tmp_path / 'second', folder, lookalike_threshold=-1)
  old_dir = _as_version_1_0(v1)
  cfg.lookalike_threshold = 8
  with pytest.raises(
    ValueError,
    match=r'\(dataset version 1.0.0\)[\s\S]*Here [1-9]\d* of 43 films '
    r'would not be in the split they were in[\s\S]*--overwrite',
  ):
    data_lib.prepare(cfg, progress=False)
  assert not Path(v1.dataset_dir).exists()  # nothing half-written
  h = data_lib.prepare(cfg, overwrite=True, progress=False)  # --overwrite replaces it
  assert Path(h.dataset_dir).name == '1.1.0' and not old_dir.exists()
  assert h.metadata['lookalikes']['num_groups'] == 6


def test_lookalike_threshold_checked_and_recorded(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE)
  cfg, _ = _prepare(tmp_path, folder, lookalike_threshold=4)
  cfg.lookalike_threshold = 8
  with pytest.raises(
    ValueError,
    match=r'settings.lookalike_threshold: prepared 4, requested 8'
    r'[\s\S]*--config.data.lookalike_threshold=8',
  ):
    data_lib.prepare(cfg, progress=False)
  cfg.lookalike_threshold = 300
  with pytest.raises(ValueError, match=r'lookalike_threshold=300; expected -1'):
    data_lib.prepare(cfg, progress=False)


def test_class_folders_match_case_insensitively(tmp_path):
  root = tmp_path / 'kaggle'
  for name in ('covid', 'NORMAL', 'viral pneumonia', 'Lung_Opacity', 'notes'):
    (root / name).mkdir(parents=True)
  (root / 'covid' / 'images').mkdir()
  found = folders.class_folders(root, ('COVID', 'Normal', 'Viral Pneumonia'))
  assert found == {
    'COVID': root / 'covid' / 'images',
    'Normal': root / 'NORMAL',
    'Viral Pneumonia': root / 'viral pneumonia',
  }
  if (root / 'COVID').is_dir():
    return  # a case-insensitive file system: 'Covid' below would be 'covid'
  (root / 'Covid').mkdir()
  with pytest.raises(ValueError, match=r"2 folders in .* could hold the 'COVID' images"):
    folders.class_folders(root, ('COVID',))


def test_mismatched_settings_detected_with_command(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE)
  cfg, _ = _prepare(tmp_path, folder, val_fraction=0.2, stored_size=32)
  cfg.val_fraction, cfg.stored_size = 0.3, 48
  with pytest.raises(ValueError, match=r'settings\.val_fraction: prepared 0\.2') as e:
    data_lib.prepare(cfg, progress=False)
  msg = str(e.value)
  assert 'settings.val_fraction: prepared 0.2, requested 0.3' in msg
  assert 'settings.stored_size: prepared 32, requested 48' in msg
  assert 'python -m launch.prepare_data --config ' in msg
  assert '--config.data.val_fraction=0.3' in msg and '--config.data.split_seed=0' in msg
  assert '--config.data.stored_size=48' in msg and '--overwrite' in msg and str(folder) in msg
  h = data_lib.prepare(cfg, overwrite=True, progress=False)
  assert h.class_counts['validation'] == [3, 3, 3] and h.stored_size == 48
  # Changed folder contents are detected too.
  helpers.save_png(folder / 'COVID' / 'images' / 'COVID-99.png', np.ones((16, 16), np.uint8))
  with pytest.raises(ValueError, match=r'source_fingerprint.num_files: prepared 30, requested 31'):
    data_lib.prepare(cfg, progress=False)


def test_new_image_size_reuses_the_prepared_folder(tmp_path):
  # stored_size=0 (automatic): a folder is stored once at 224 px and serves every model size up
  # to 224 without re-preparation; the loader resamples.
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE, size=40)
  cfg, h = _prepare(tmp_path, folder, image_size=64)
  assert h.stored_size == builder.DEFAULT_STORED_SIZE == 224
  assert h.source('train')[0]['image'].shape == (224, 224)
  for size in (128, 192, 32):
    cfg.image_size = size
    assert dataset.stored_size(cfg) == 224
    h2 = data_lib.prepare(cfg, progress=False)
    assert h2.dataset_dir == h.dataset_dir and h2.stored_size == 224
    assert h2.filenames('test') == h.filenames('test')
  # Larger than the stored side: that needs larger stored images, and the message says so.
  cfg.image_size = 256
  with pytest.raises(
    ValueError,
    match=r'stored_size: prepared 224, requested 256[\s\S]*smaller '
    r'than image_size=256[\s\S]*--config.data.stored_size=256',
  ):
    data_lib.prepare(cfg, progress=False)
  # A folder prepared at an explicit larger side: the message says how to reuse it.
  cfg.image_size, cfg.stored_size = 128, 160
  with pytest.raises(ValueError, match=r'can serve image_size=128.*--config.data.stored_size=224'):
    data_lib.prepare(cfg, progress=False)
  # Phantoms stay stored at image_size (generated per setting; the default run is unchanged).
  pcfg = helpers.data_config(tmp_path / 'tfds', image_size=24)
  assert dataset.stored_size(pcfg) == 24


def test_phantom_and_real_do_not_collide(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE)
  cfg, real = _prepare(tmp_path, folder)
  cfg.source = 'phantom'
  ph = data_lib.prepare(cfg, progress=False)
  assert ph.name == 'cxr_phantom' and ph.dataset_dir != real.dataset_dir
  assert ph.metadata['phantom']['num_per_class'] == 12 and ph.phantom_dir
  assert sum(ph.num_examples.values()) == 36 and sum(real.num_examples.values()) == 30
  # Other phantom settings get their own dataset beside the first (generated data never clashes).
  cfg.phantom.seed = 1
  ph1 = data_lib.prepare(cfg, progress=False)
  assert ph1.dataset_dir != ph.dataset_dir and ph1.metadata['phantom']['seed'] == 1
  cfg.phantom.seed = 0
  assert data_lib.prepare(cfg, progress=False).dataset_dir == ph.dataset_dir


def test_four_class_and_flat_folders(tmp_path):
  counts = {**THREE, 'Lung_Opacity': 5}
  folder = helpers.make_folder(tmp_path / 'kaggle', counts, subfolder='')
  (folder / 'Normal' / '.DS_Store').write_bytes(b'\0junk')
  _, h4 = _prepare(tmp_path, folder, builder_config='4class')
  assert h4.class_names[-1] == 'Lung_Opacity'
  assert [sum(c) for c in zip(*h4.class_counts.values(), strict=True)] == [10, 10, 10, 5]
  assert h4.filenames('train')[0].count('/') == 1  # '<Class>/<file>' (no images/ folder)
  assert h4.metadata['ignored_hidden_files'] == ['Normal/.DS_Store']
  _, h3 = _prepare(tmp_path, folder)  # 3class ignores Lung_Opacity/
  assert sum(h3.num_examples.values()) == 30


def _bad_folder(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', THREE)
  d = folder / 'COVID' / 'images'
  (d / 'zero.png').write_bytes(b'')
  good = helpers.png_bytes(helpers.random_image(np.random.default_rng(5), 32))
  (d / 'truncated.png').write_bytes(good[: len(good) // 2])
  (d / 'text.png').write_text('<html>not found</html>')
  (d / 'notes.txt').write_text('reading list')
  (d / 'bomb.png').write_bytes(helpers.png_bomb_header(20000, 20000))
  # Unusual but valid files load: RGBA and 16-bit.
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., :3], rgba[..., 3] = 77, 255
  helpers.save_png(d / 'rgba.png', rgba)
  helpers.save_png(d / 'sixteen.png', (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257))
  return folder


BAD = {
  'zero.png': 'empty (0 bytes)',
  'truncated.png': 'truncated',
  'text.png': 'not an image',
  'notes.txt': 'not an image',
  'bomb.png': 'decompression bomb',
}


def test_bad_files_error_names_each_file(tmp_path):
  folder = _bad_folder(tmp_path)
  with pytest.raises(builder.BadImagesError) as e:
    _prepare(tmp_path, folder)
  msg = str(e.value)
  assert msg.startswith(f'5 unusable image file(s) in {folder}')
  for name, reason in BAD.items():
    line = next(
      entry
      for entry in msg.splitlines()
      if entry.strip().startswith(str(folder / 'COVID' / 'images' / name))
    )
    assert reason in line, line
  assert "on_bad_image='skip'" in msg and '--config.data.on_bad_image=skip' in msg


def test_bad_files_skipped_counted_and_reported(tmp_path):
  folder = _bad_folder(tmp_path)
  _, h = _prepare(tmp_path, folder, on_bad_image='skip', stored_size=32)
  skipped = {s['file'].split('/')[-1]: s['reason'] for s in h.metadata['skipped']}
  assert set(skipped) == set(BAD)
  for name, reason in BAD.items():
    assert reason in skipped[name]
  assert [sum(c) for c in zip(*h.class_counts.values(), strict=True)] == [
    12,
    10,
    10,
  ]  # + rgba, sixteen
  table = dataset.summary_table(h)
  assert 'skipped bad files: 5' in table and 'skipped COVID/images/bomb.png' in table
  by_name = {
    n: r['image']
    for s in ('train', 'validation', 'test')
    for n, r in zip(h.filenames(s), _all_records(h, s), strict=True)
  }
  assert np.all(by_name['COVID/images/rgba.png'] == 77)
  expect16 = images.resize_grey(np.arange(256, dtype=np.uint8).reshape(16, 16), 32)
  np.testing.assert_array_equal(by_name['COVID/images/sixteen.png'], expect16)


def test_folder_errors(tmp_path):
  folder = helpers.make_folder(tmp_path / 'kaggle', {'COVID': 3, 'Normal': 3})
  with pytest.raises(FileNotFoundError) as e:
    _prepare(tmp_path, folder)
  assert "Class folder 'Viral Pneumonia/' is missing in" in str(e.value)
  assert "found folders: ['COVID', 'Normal']" in str(e.value)
  (folder / 'Viral Pneumonia' / 'images').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r'Viral Pneumonia/images contains no image files'):
    _prepare(tmp_path, folder)
  with pytest.raises(FileNotFoundError, match=r'does not exist\. Download the Kaggle'):
    _prepare(tmp_path, tmp_path / 'nowhere')
  with pytest.raises(ValueError, match=r"Unknown builder config '5class'.*\['3class', '4class'\]"):
    _prepare(tmp_path, folder, builder_config='5class')
  with pytest.raises(ValueError, match='sum to < 1'):
    _prepare(tmp_path, folder, val_fraction=0.5, test_fraction=0.5)
  cfg = helpers.data_config(tmp_path / 'empty_tfds', source='folder', manual_dir='')
  with pytest.raises(ValueError, match='manual_dir is empty'):
    data_lib.prepare(cfg, progress=False)


def test_concurrent_prepare_builds_once(tmp_path):
  cfg = helpers.data_config(tmp_path / 'tfds')
  out, errors = [], []

  def run():
    try:
      out.append(data_lib.prepare(cfg, progress=False))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(out) == 2
  assert out[0].filenames('train') == out[1].filenames('train')
  assert not list((tmp_path / 'tfds' / 'cxr_phantom' / '3class').glob('incomplete*'))
