r"""Prepares the TFDS ArrayRecord dataset from a Kaggle-layout folder (or generated phantoms).

  python -m launch.prepare_data --manual_dir=/data/COVID-19_Radiography_Dataset \
      --data_dir=/data/tfds [--config=3class] [--val_fraction=0.15 --test_fraction=0.15] \
      [--split_seed=0] [--stored_size=0 --image_size=224] [--on_bad_image=skip] [--overwrite]
  python -m launch.prepare_data --phantom --data_dir=/tmp/tfds --num_per_class=300

Prints a per-class, per-split summary table at the end. Training prepares on first use anyway;
this entry point is for doing it ahead of time and seeing the counts.
"""

import sys

from absl import app
from absl import flags

from configs import base
from jaxcxr import data as data_lib
from jaxcxr.data import builder
from jaxcxr.data import images

_MANUAL_DIR = flags.DEFINE_string('manual_dir', '', 'Kaggle-layout folder (COVID/, Normal/, ...).')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data_dir ('' -> $JAXCXR_DATA_DIR or "
                                '~/.cache/jaxcxr/tfds).')
_CONFIG = flags.DEFINE_string('config', '3class', f'Builder config: {list(builder.CONFIG_NAMES)}.')
_PHANTOM = flags.DEFINE_bool('phantom', False, 'Generate and prepare synthetic phantom data.')
_NUM_PER_CLASS = flags.DEFINE_integer('num_per_class', 300, 'Phantom images per class.')
_PHANTOM_SIZE = flags.DEFINE_integer('phantom_size', 128, 'Phantom image side (pixels).')
_PHANTOM_SEED = flags.DEFINE_integer('phantom_seed', 0, 'Phantom generator seed.')
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the stratified split.')
_VAL = flags.DEFINE_float('val_fraction', 0.15, 'Validation fraction per class.')
_TEST = flags.DEFINE_float('test_fraction', 0.15, 'Test fraction per class.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Model input side (stored side if '
                                   '--stored_size=0).')
_STORED_SIZE = flags.DEFINE_integer('stored_size', 0, 'Stored image side (0 -> --image_size).')
_ON_BAD = flags.DEFINE_enum('on_bad_image', 'error', ['error', 'skip'],
                            'Unusable files: stop with an error, or skip and report them.')
_MAX_PIXELS = flags.DEFINE_integer('max_image_pixels', images.DEFAULT_MAX_PIXELS,
                                   'Refuse larger images (decompression-bomb guard).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete and rebuild an existing dataset.')


def main(argv):
  del argv
  d = base.get_data_config()
  d.source = 'phantom' if _PHANTOM.value else 'folder'
  d.manual_dir = _MANUAL_DIR.value
  d.data_dir = _DATA_DIR.value
  d.builder_config = _CONFIG.value
  d.phantom.num_per_class = _NUM_PER_CLASS.value
  d.phantom.image_size = _PHANTOM_SIZE.value
  d.phantom.seed = _PHANTOM_SEED.value
  d.split_seed = _SPLIT_SEED.value
  d.val_fraction = _VAL.value
  d.test_fraction = _TEST.value
  d.image_size = _IMAGE_SIZE.value
  d.stored_size = _STORED_SIZE.value
  d.on_bad_image = _ON_BAD.value
  d.max_image_pixels = _MAX_PIXELS.value
  if not d.manual_dir and not _PHANTOM.value:
    sys.exit('error: pass --manual_dir=<Kaggle folder> or --phantom.')
  try:
    handle = data_lib.prepare(d, overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError) as e:  # messages name the file/setting and the fix
    sys.exit(f'error: {e}')
  print(builder.summary_table(handle))


if __name__ == '__main__':
  app.run(main)
