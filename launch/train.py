r"""Trains a jaxcxr model.

  python -m launch.train --config configs/default.py --workdir workdirs/default
  python -m launch.train --config configs/densenet201.py --workdir /tmp/dn201 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset

Re-running the same command with the same workdir resumes from the last checkpoint. On SIGTERM
(preemption) the run writes a checkpoint and exits with status 75; re-run to resume. Multi-host:
set JAXCXR_DISTRIBUTED=1 (or run on a TPU slice / under SLURM) to call jax.distributed.initialize().
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and reports.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jaxcxr import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize()
  from jaxcxr import train  # pylint: disable=g-import-not-at-top
  try:
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Preempted:
    sys.exit(train.EXIT_PREEMPTED)
  except (ValueError, FileNotFoundError, train.NonFiniteError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  keys = [k for k in summary if k.startswith(summary['split'] + '_')]
  print(' '.join(f'{k}={summary[k]:.4f}' for k in keys), file=sys.stderr)
  print(f'Results in {os.path.abspath(_WORKDIR.value)}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
