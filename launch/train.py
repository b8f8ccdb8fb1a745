r"""Trains a jaxcxr model.

  python -m launch.train --config configs/default.py --workdir workdirs/default
  python -m launch.train --config configs/densenet201.py --workdir /tmp/dn201 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset

Prints a progress bar (on a terminal), one line per epoch and the test metrics; --verbosity=0 adds
the library INFO logs (Orbax, TFDS, Grain). Re-running the same command with the same workdir
resumes from the last checkpoint. On SIGTERM
(preemption) the run writes a checkpoint and exits with status 75; re-run to resume. Multi-host:
set JAXCXR_DISTRIBUTED=1 (or run on a TPU slice / under SLURM) to call jax.distributed.initialize().
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxcxr.evaluation import report
from jaxcxr.training import distributed, errors
from launch import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file[:arg].', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and reports.')
_JIT_CACHE = flags.DEFINE_string(
  'jit_cache',
  os.environ.get('JAXCXR_JIT_CACHE', '~/.cache/jaxcxr/xla'),
  'Persistent XLA compilation cache (a resumed or repeated run skips recompiling); "" = off.',
)
_JIT_CACHE_MIN_S = flags.DEFINE_float(
  'jit_cache_min_compile_s',
  float(os.environ.get('JAXCXR_JIT_CACHE_MIN_COMPILE_S', '1.0')),
  'Only compiles slower than this are stored in --jit_cache (the test suite stores all).',
)
flags.mark_flags_as_required(['config', 'workdir'])

# Exit statuses (jaxcxr.training.errors, docs/RELIABILITY.md): 0 done; 1 bad flags; 2 invalid
# config, data, weights or workdir, or non-finite training; 74 a write failed, e.g. a full disk at a
# checkpoint (earlier checkpoints are intact: fix the disk and re-run); 75 preempted by SIGTERM
# after writing a checkpoint (re-run to resume).


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed.maybe_initialize()
  distributed.enable_compilation_cache(_JIT_CACHE.value, _JIT_CACHE_MIN_S.value)
  try:
    summary = report.train_and_report(_CONFIG.value, _WORKDIR.value)
  except errors.Preempted:
    sys.exit(errors.EXIT_PREEMPTED)
  except (ValueError, FileNotFoundError, errors.NonFiniteError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  except OSError as e:
    cli.fail_write(e)
  keys = [k for k in summary if k.startswith(summary['split'] + '_')]
  print(' '.join(f'{k}={summary[k]:.4f}' for k in keys), file=sys.stderr)
  print(f'Results in {os.path.abspath(_WORKDIR.value)}', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
