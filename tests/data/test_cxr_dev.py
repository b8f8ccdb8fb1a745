"""The real dev set (../shared/data/cxr_dev): prepared counts and loadable batches."""

import numpy as np
import pytest

import jaxcxr.data as data_lib
from jaxcxr.data import loader
from tests.data import helpers


@pytest.mark.shared_data
def test_prepare_cxr_dev(tmp_path, cxr_dev_dir):
  cfg = helpers.data_config(
    tmp_path / 'tfds', source='folder', manual_dir=str(cxr_dev_dir), image_size=64
  )
  h = data_lib.prepare(cfg, progress=False)
  assert h.class_names == ('COVID', 'Normal', 'Viral Pneumonia')
  assert sum(h.num_examples.values()) == 1200
  assert [sum(c) for c in zip(*h.class_counts.values(), strict=True)] == [400, 400, 400]
  assert h.class_counts == {'train': [280] * 3, 'validation': [60] * 3, 'test': [60] * 3}
  assert h.metadata['skipped'] == [] and h.metadata['duplicates'] == []
  b = next(loader.train_iterator(cfg, h, local_batch_size=16, seed=0))
  assert b['image'].shape == (16, 64, 64, 1) and b['image'].std() > 10
  e = next(iter(loader.eval_iterator(cfg, h, 'test', local_batch_size=16)))
  assert e['valid'].all() and np.isin(e['label'], [0, 1, 2]).all()
