r"""Explores a chest X-ray data set: counts, oversampling, samples, augmentation, sizes, duplicates.

  python -m launch.explore --manual_dir=../shared/data/cxr_dev --out=/tmp/explore_cxr
  python -m launch.explore --data_dir=/data/tfds [--config=3class] --out=/tmp/explore_tfds
  python -m launch.explore --phantom --out=/tmp/explore_phantom [--num_per_class=300]
  common: [--image_size=224] [--samples=8] [--aug_draws=6] [--batch_size=32] [--dup_threshold=8]

--manual_dir prepares the Kaggle folder into --data_dir (default $JAXCXR_DATA_DIR or
~/.cache/jaxcxr/tfds) as training would, and inspects every file; --data_dir alone opens an already
prepared dataset (its split settings are read back) and inspects the stored records. Writes
explore.md, explore.json and PNG figures into --out (see jaxcxr/explore.py).
"""

import sys

from absl import app
from absl import flags

from jaxcxr.tools import explore

from configs import base
from jaxcxr.data import builder

_MANUAL_DIR = flags.DEFINE_string('manual_dir', '', 'Kaggle-layout folder (COVID/, Normal/, ...).')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data_dir ('' -> $JAXCXR_DATA_DIR or "
                                '~/.cache/jaxcxr/tfds); alone: explore the dataset prepared there.')
_PHANTOM = flags.DEFINE_bool('phantom', False, 'Explore the generated phantom data.')
_CONFIG = flags.DEFINE_string('config', '3class', f'Builder config: {list(builder.CONFIG_NAMES)}.')
_OUT = flags.DEFINE_string('out', None, 'Report folder (explore.md, explore.json, figures).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Model input side (and stored side when '
                                   'preparing a folder).')
_SAMPLES = flags.DEFINE_integer('samples', 8, 'Sample images per class.')
_AUG_DRAWS = flags.DEFINE_integer('aug_draws', 6, 'Augmentation draws per previewed image.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Loader batch size for the epoch draws.')
_SEED = flags.DEFINE_integer('seed', 0, 'Training seed (epoch draws, augmentation, samples).')
_DUP = flags.DEFINE_integer('dup_threshold', 8, 'Near-duplicate threshold (bits of 256).')
_NUM_PER_CLASS = flags.DEFINE_integer('num_per_class', 300, 'Phantom images per class.')
_PHANTOM_SIZE = flags.DEFINE_integer('phantom_size', 128, 'Phantom image side (pixels).')
_ON_BAD = flags.DEFINE_enum('on_bad_image', 'skip', ['error', 'skip'],
                            'Unusable files when preparing a folder (listed in the report).')
flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(_MANUAL_DIR.value) + _PHANTOM.value + (not _MANUAL_DIR.value and not _PHANTOM.value
                                                  and bool(_DATA_DIR.value)) != 1:
    sys.exit('error: pass exactly one of --manual_dir=<Kaggle folder>, --phantom, or --data_dir '
             'alone (a prepared dataset).')
  d = base.get_data_config()
  d.data_dir = _DATA_DIR.value
  d.builder_config = _CONFIG.value
  d.image_size = _IMAGE_SIZE.value
  d.on_bad_image = _ON_BAD.value
  d.source = 'phantom' if _PHANTOM.value else 'folder'
  d.manual_dir = _MANUAL_DIR.value
  d.phantom.num_per_class = _NUM_PER_CLASS.value
  d.phantom.image_size = _PHANTOM_SIZE.value
  try:
    if d.source == 'folder' and not d.manual_dir:
      explore.fill_prepared_settings(d)
    report = explore.explore(d, _OUT.value, samples=_SAMPLES.value, aug_draws=_AUG_DRAWS.value,
                             batch_size=_BATCH.value, seed=_SEED.value,
                             dup_threshold=_DUP.value)
  except (ValueError, FileNotFoundError) as e:  # messages name the file/setting and the fix
    sys.exit(f'error: {e}')
  dup = report['duplicates']
  for split, counts in report['split_counts'].items():
    print(f'{split:>10}: {counts}')
  print(f"epoch draws: none {report['epoch']['none']}, oversample {report['epoch']['oversample']}")
  print(f"duplicate groups: {dup['num_groups']} ({dup['exact_groups']} exact, {dup['near_groups']} "
        f"near, {dup['cross_split_groups']} cross-split, {dup['cross_class_groups']} cross-class)")
  print(f'Report: {_OUT.value}/explore.md')


if __name__ == '__main__':
  app.run(main)
