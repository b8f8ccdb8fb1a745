r"""Explores a config's data set: counts, oversampling, samples, augmentation, sizes, duplicates.

  python -m launch.explore --config configs/densenet201.py \
      --config.data.manual_dir=../shared/data/cxr_dev --out=/tmp/explore_cxr
  python -m launch.explore --config configs/densenet201.py --config.data.data_dir=/data/tfds \
      --out=/tmp/explore_tfds            # no manual_dir: the dataset already prepared there
  python -m launch.explore --config configs/default.py --out=/tmp/explore_phantom
  options: [--samples=8] [--aug_draws=6] [--dup_threshold=8]

The data set is what `launch.train` with the same `--config` and `--config.data.*` flags trains
on: a Kaggle folder (`config.data.manual_dir`) is prepared into `config.data.data_dir` as training
would and every file in it is inspected; a folder config without manual_dir opens the dataset
prepared in data_dir (its split settings are read back) and inspects the stored records; phantom
configs inspect the generated folder. Epoch draws use config.train.batch_size and config.seed.
Writes explore.md, explore.json and PNG figures into --out (see jaxcxr/tools/explore.py).
"""

from absl import app, flags
from ml_collections import config_flags

from jaxcxr.tools import duplicates, explore
from jaxcxr.training import errors
from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file[:arg]; its config.data is explored.', lock_config=True
)
_OUT = flags.DEFINE_string('out', None, 'Report folder (explore.md, explore.json, figures).')
_SAMPLES = flags.DEFINE_integer('samples', 8, 'Sample images per class.')
_AUG_DRAWS = flags.DEFINE_integer('aug_draws', 6, 'Augmentation draws per previewed image.')
_DUP = flags.DEFINE_integer(
  'dup_threshold', duplicates.DEFAULT_DUP_THRESHOLD, 'Near-duplicate threshold (bits of 256).'
)
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    report = explore.explore(
      config.data,
      _OUT.value,
      samples=_SAMPLES.value,
      aug_draws=_AUG_DRAWS.value,
      batch_size=config.train.batch_size,
      seed=config.seed,
      dup_threshold=_DUP.value,
    )
  except (ValueError, FileNotFoundError) as e:  # messages name the file/setting and the fix
    cli.fail(e, errors.EXIT_USAGE)
  except OSError as e:  # e.g. an unwritable --out
    cli.fail(e, errors.EXIT_IO_ERROR)
  print(explore.summary_text(report))
  print(f'Report: {_OUT.value}/explore.md')


if __name__ == '__main__':
  cli.run(main)
