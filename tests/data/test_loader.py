"""Grain pipelines: batch format, sampling ratios, determinism, host sharding, resume, eval."""

import numpy as np
import pytest

import jaxcxr.data as data_lib
from jaxcxr.data import dataset, images, loader
from tests.data import helpers


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_train_batches_format_and_infinite(phantom_handle):
  cfg, h = phantom_handle
  it = loader.train_iterator(cfg, h, local_batch_size=8, seed=0)
  batches = _take(it, 10)  # 24 train records: 10 batches of 8 span > 3 epochs
  for b in batches:
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (8, 32, 32, 1) and b['image'].dtype == np.uint8
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    assert set(b['label'].tolist()) <= {0, 1, 2}
  assert loader.steps_per_epoch(h, 8) == 3 and loader.steps_per_epoch(h, 7) == 4


def test_same_seed_same_batches_other_seed_differs(phantom_handle):
  cfg, h = phantom_handle
  a = _take(loader.train_iterator(cfg, h, local_batch_size=8, seed=3), 4)
  b = _take(loader.train_iterator(cfg, h, local_batch_size=8, seed=3), 4)
  c = _take(loader.train_iterator(cfg, h, local_batch_size=8, seed=4), 4)
  _assert_same(a, b)
  assert not all(np.array_equal(x['image'], y['image']) for x, y in zip(a, c, strict=True))


def test_augmentation_changes_images_and_can_be_disabled(phantom_handle):
  cfg, h = phantom_handle
  on = _take(loader.train_iterator(cfg, h, local_batch_size=8, seed=0), 3)
  cfg_off = helpers.data_config(cfg.data_dir, **{'augment.enabled': False, 'sampling': 'none'})
  off = _take(loader.train_iterator(cfg_off, h, local_batch_size=8, seed=0), 3)
  stored = {
    images.content_hash(r['image'][..., None]) for r in (h.source('train')[i] for i in range(24))
  }
  # Without augmentation every image is a stored record, and one epoch is each record once.
  off_hashes = [images.content_hash(im) for b in off for im in b['image']]
  assert sorted(off_hashes) == sorted(stored)
  on_hashes = {images.content_hash(im) for b in on for im in b['image']}
  assert not on_hashes & stored


@pytest.mark.parametrize('sampling', ['oversample', 'none'])
def test_process_blocks_concatenate_to_the_global_batch(phantom_handle, sampling):
  cfg, h = phantom_handle
  cfg = helpers.data_config(cfg.data_dir, sampling=sampling)
  single = _take(loader.train_iterator(cfg, h, local_batch_size=12, seed=1), 5)
  parts = [
    _take(
      loader.train_iterator(cfg, h, local_batch_size=4, seed=1, process_index=p, process_count=3), 5
    )
    for p in range(3)
  ]
  for k in range(5):  # augmentation included: identical pixels, whatever the process count
    np.testing.assert_array_equal(
      np.concatenate([p[k]['image'] for p in parts]), single[k]['image']
    )
    np.testing.assert_array_equal(
      np.concatenate([p[k]['label'] for p in parts]), single[k]['label']
    )


def test_processes_read_disjoint_records_covering_each_epoch(phantom_handle):
  cfg, h = phantom_handle
  cfg = helpers.data_config(cfg.data_dir, sampling='none', **{'augment.enabled': False})
  per_proc = []
  for p in range(2):  # epoch = 24 records = 3 global batches of 2 x 4
    batches = _take(
      loader.train_iterator(cfg, h, local_batch_size=4, seed=2, process_index=p, process_count=2), 3
    )
    per_proc.append([images.content_hash(im) for b in batches for im in b['image']])
  assert not set(per_proc[0]) & set(per_proc[1])
  stored = [images.content_hash(h.source('train')[i]['image'][..., None]) for i in range(24)]
  assert sorted(per_proc[0] + per_proc[1]) == sorted(stored)


def _imbalanced_handle(tmp_path):
  folder = helpers.make_folder(
    tmp_path / 'imb', {'COVID': 40, 'Normal': 4, 'Viral Pneumonia': 4}, size=8
  )
  cfg = helpers.data_config(
    tmp_path / 'tfds',
    source='folder',
    manual_dir=str(folder),
    image_size=8,
    val_fraction=0.0,
    test_fraction=0.0,
  )
  return cfg, data_lib.prepare(cfg, progress=False)


def test_oversampling_end_to_end_10_1_1(tmp_path):
  cfg, h = _imbalanced_handle(tmp_path)
  assert h.class_counts['train'] == [40, 4, 4]
  for sampling, want in [('oversample', [1 / 3] * 3), ('none', [40 / 48, 4 / 48, 4 / 48])]:
    cfg.sampling = sampling
    it = loader.train_iterator(cfg, h, local_batch_size=48, seed=0)
    labels = np.concatenate([b['label'] for b in _take(it, 63)])  # 3024 draws, 63 epochs
    np.testing.assert_allclose(np.bincount(labels, minlength=3) / len(labels), want, atol=0.04)
  w = loader.class_weights(h)
  np.testing.assert_allclose(w, [48 / 120, 4.0, 4.0], rtol=1e-6)
  assert np.isclose((w * np.array([40, 4, 4])).sum() / 48, 1.0)


def test_resume_from_get_state(phantom_handle):
  cfg, h = phantom_handle
  it = loader.train_iterator(cfg, h, local_batch_size=8, seed=5)
  _take(it, 4)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = loader.train_iterator(cfg, h, local_batch_size=8, seed=5)
  fresh.set_state(state)
  _assert_same(_take(fresh, 4), expected)


@pytest.mark.slow
def test_resume_with_two_workers_through_orbax(phantom_handle, tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  cfg, h = phantom_handle
  ref = _take(loader.train_iterator(cfg, h, local_batch_size=8, seed=6), 6)
  cfg2 = helpers.data_config(cfg.data_dir, num_workers=2, prefetch=2)
  it = loader.train_iterator(cfg2, h, local_batch_size=8, seed=6)
  try:
    first = _take(it, 3)
    _assert_same(first, ref[:3])  # workers do not change the stream
    with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
      mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
      mngr.wait_until_finished()
    _assert_same(_take(it, 3), ref[3:])
  finally:
    it.close()
  fresh = loader.train_iterator(cfg2, h, local_batch_size=8, seed=6)
  try:
    with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
      mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same(_take(fresh, 3), ref[3:])
  finally:
    fresh.close()


def test_eval_pads_and_has_no_augmentation(phantom_handle):
  cfg, h = phantom_handle
  n = h.num_examples['test']
  assert n == 6
  batches = list(loader.eval_iterator(cfg, h, 'test', local_batch_size=4))
  assert len(batches) == 2  # ceil(6 / 4): the last batch padded
  for b in batches:
    assert b['image'].shape == (4, 32, 32, 1) and b['image'].dtype == np.uint8
    assert b['valid'].dtype == np.bool_ and b['index'].dtype == np.int32
  assert batches[1]['valid'].tolist() == [True, True, False, False]
  assert batches[1]['index'].tolist() == [4, 5, -1, -1]
  assert not batches[1]['image'][2:].any()
  src = h.source('test')
  for b in batches:
    for img, label, idx, ok in zip(b['image'], b['label'], b['index'], b['valid'], strict=True):
      if ok:
        np.testing.assert_array_equal(img[..., 0], src[int(idx)]['image'])
        assert label == src[int(idx)]['label']
  assert [h.filenames('test')[i] for i in batches[0]['index']] == h.filenames('test')[:4]
  again = list(loader.eval_iterator(cfg, h, 'test', local_batch_size=4))
  _assert_same(batches, again)


def test_eval_multi_process_blocks(phantom_handle):
  cfg, h = phantom_handle
  per = [
    list(loader.eval_iterator(cfg, h, 'test', local_batch_size=2, process_index=p, process_count=2))
    for p in range(2)
  ]
  assert len(per[0]) == len(per[1]) == 2
  gathered = np.concatenate(
    [np.concatenate([per[p][k]['index'] for p in range(2)]) for k in range(2)]
  )
  assert gathered.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]


def test_eval_resizes_stored_images(tmp_path):
  folder = helpers.make_folder(
    tmp_path / 'k', {'COVID': 3, 'Normal': 3, 'Viral Pneumonia': 3}, size=40
  )
  cfg = helpers.data_config(
    tmp_path / 'tfds', source='folder', manual_dir=str(folder), image_size=16, stored_size=24
  )
  h = data_lib.prepare(cfg, progress=False)
  b = next(iter(loader.eval_iterator(cfg, h, 'train', local_batch_size=2)))
  from jaxcxr.data import preprocess  # pylint: disable=g-import-not-at-top

  name = h.filenames('train')[int(b['index'][0])]
  np.testing.assert_array_equal(
    b['image'][0], preprocess.load_image_for_inference(folder / name, 16, stored_size=24)
  )
  assert dataset.stored_size(cfg) == 24
  t = next(loader.train_iterator(cfg, h, local_batch_size=2, seed=0))
  assert t['image'].shape == (2, 16, 16, 1)


def test_bad_arguments(phantom_handle):
  cfg, h = phantom_handle
  with pytest.raises(ValueError, match='process_index=2 must be in'):
    loader.train_iterator(cfg, h, local_batch_size=4, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='local_batch_size=0'):
    loader.eval_iterator(cfg, h, 'test', local_batch_size=0)
  with pytest.raises(ValueError, match="Unknown split 'val'"):
    h.source('val')
  bad = helpers.data_config(cfg.data_dir, sampling='weighted')
  with pytest.raises(ValueError, match="sampling='weighted'"):
    loader.train_iterator(bad, h, local_batch_size=4, seed=0)


def test_fast_record_parser_matches_tfds(phantom_handle):
  _, h = phantom_handle
  src = loader.RecordSource(h, 'train')
  assert src._fast  # pylint: disable=protected-access
  tf_src = h.source('train')
  for i in range(len(src)):
    r = src[i]
    np.testing.assert_array_equal(r['image'], tf_src[i]['image'])
    assert r['label'] == tf_src[i]['label'] and r['label'].dtype == np.int32
