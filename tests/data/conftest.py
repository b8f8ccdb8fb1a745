"""Fixtures shared by tests/data: a prepared tiny phantom dataset and the real dev set."""

import pytest

import jaxcxr.data as data_lib
from tests.data import helpers


@pytest.fixture(scope='session')
def phantom_handle(tmp_path_factory):
  """(data_cfg, handle) of a 3-class phantom set, 12 per class at 32 px (24 train images)."""
  cfg = helpers.data_config(tmp_path_factory.mktemp('phantom_tfds'))
  return cfg, data_lib.prepare(cfg, progress=False)


@pytest.fixture
def cxr_dev_dir():
  if not helpers.CXR_DEV.is_dir():
    pytest.skip(f'real dev set not found at {helpers.CXR_DEV.resolve()} (../shared/data/cxr_dev)')
  return helpers.CXR_DEV.resolve()
