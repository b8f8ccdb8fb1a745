r"""Prepares a config's TFDS ArrayRecord dataset ahead of training and prints its split counts.

  python -m launch.prepare_data --config configs/densenet201.py \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset --config.data.data_dir=/data/tfds
  python -m launch.prepare_data --config configs/default.py      # the generated phantom data
  [--config.data.on_bad_image=skip] [--config.data.val_fraction=0.2 ...] [--overwrite]

Prepares exactly what `launch.train` with the same `--config` and `--config.data.*` flags prepares
on first use (class set, split, stored size), or opens it when it exists, then prints a per-class,
per-split summary table with the skipped files, duplicates, label conflicts and the look-alike
films (near duplicates: re-uploads, re-encodings) it kept together in one split. Exit status 2 (and
a message naming the file or setting and the fix) for bad data or settings, or for a dataset an
older jaxcxr prepared whose splits this version would change (--overwrite replaces it).
"""

from absl import app, flags
from ml_collections import config_flags

from jaxcxr import data as data_lib
from jaxcxr.data import dataset
from jaxcxr.training import errors
from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file[:arg]; its config.data is prepared.', lock_config=True
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite',
  False,
  'Delete and rebuild an existing dataset (and one an older jaxcxr version prepared).',
)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    handle = data_lib.prepare(_CONFIG.value.data, overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError) as e:  # messages name the file/setting and the fix
    cli.fail(e, errors.EXIT_USAGE)
  except OSError as e:  # e.g. an unwritable data_dir
    cli.fail(e, errors.EXIT_IO_ERROR)
  print(dataset.summary_table(handle))


if __name__ == '__main__':
  cli.run(main)
