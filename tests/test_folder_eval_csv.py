"""folder_eval.scan_labelled: a labels CSV beside or instead of class folders (#29)."""

import numpy as np
import pytest

from jaxcxr.data import phantom
from jaxcxr.evaluation import folder_eval
from tests import dicom_films as df
from tests.data import helpers

NAMES = ('COVID', 'Normal', 'Viral Pneumonia')


@pytest.fixture
def films(tmp_path):
  greys = phantom.render(0, 4, image_size=32, rng=np.random.default_rng(0))['image']
  helpers.save_png(tmp_path / 'site' / 'COVID' / 'a.png', greys[0])
  df.write(tmp_path / 'site' / 'Normal' / 'b', greys[1])
  df.write(tmp_path / 'site' / 'extra' / 'study1' / 'c1', greys[2])
  df.write(tmp_path / 'site' / 'extra' / 'study1' / 'c2', greys[3])
  return tmp_path / 'site'


def test_csv_only(films):
  (films / 'labels.csv').write_text(
    'study,diagnosis\nextra/study1,viral pneumonia\nCOVID/a.png,COVID\n'
  )
  folder = folder_eval.scan_labelled('', NAMES, films / 'labels.csv')
  assert folder.root == films.resolve()
  assert [folder.relative(f) for f in folder.files] == [
    'COVID/a.png',
    'extra/study1/c1',
    'extra/study1/c2',
  ]
  assert folder.labels.tolist() == [0, 2, 2] and folder.missing == ['Normal']


def test_csv_beside_class_folders(films):
  csv_path = films / 'more.csv'
  csv_path.write_text('file,label\nextra/study1/c1,Normal\nNormal/b,NORMAL\n')
  folder = folder_eval.scan_labelled(str(films), NAMES, csv_path)
  assert [folder.relative(f) for f in folder.files] == [
    'COVID/a.png',
    'Normal/b',
    'extra/study1/c1',
  ]
  assert folder.labels.tolist() == [0, 1, 1] and folder.missing == ['Viral Pneumonia']
  csv_path.write_text('file,label\nNormal/b,COVID\n')
  with pytest.raises(ValueError, match=r"Normal/b is labelled 'COVID' in .*more\.csv but lies in"):
    folder_eval.scan_labelled(str(films), NAMES, csv_path)


def test_without_csv_is_the_class_layout(films):
  folder = folder_eval.scan_labelled(str(films), NAMES)
  assert [folder.relative(f) for f in folder.files] == ['COVID/a.png', 'Normal/b']
  assert folder.ignored_folders == ['extra']
