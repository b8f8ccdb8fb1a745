r"""Loader throughput benchmark (not a test): images/s of a config's training pipeline, and why.

  python -m launch.benchmark_data --config configs/default.py --workers=0,1,2
  python -m launch.benchmark_data --config configs/default.py --config.data.image_size=224 \
      --config.data.source=folder --config.data.manual_dir=../shared/data/cxr_dev \
      --config.train.batch_size=64 --workers=0,2

The data settings (source, sizes, augmentation, read threads, data_dir) come from the config, as in
`launch.train`; the batch is `config.train.batch_size`. See jaxcxr/benchmarks/data.py.
"""

from absl import flags
from ml_collections import config_flags

from jaxcxr.benchmarks import data as benchmark_data
from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Grain worker counts to time.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 60, 'Timed batches per worker count.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches first (worker start-up).')
flags.mark_flags_as_required(['config'])


def main(argv) -> int:
  del argv
  return benchmark_data.data_main(
    _CONFIG.value,
    workers=[int(w) for w in _WORKERS.value],
    num_batches=_NUM_BATCHES.value,
    warmup=_WARMUP.value,
  )


if __name__ == '__main__':
  cli.run(main)
