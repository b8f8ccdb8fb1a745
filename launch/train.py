r"""Trains a jaxcxr model.

  python -m launch.train --config configs/default.py --workdir workdirs/default
  python -m launch.train --config configs/densenet201.py --workdir /tmp/dn201 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset

Re-running the same command with the same workdir resumes from the last checkpoint. On SIGTERM
(preemption) the run writes a checkpoint and exits with status 75; re-run to resume. Multi-host:
set JAXCXR_DISTRIBUTED=1 (or run on a TPU slice / under SLURM) to call jax.distributed.initialize().
"""

import ast
import logging
import os
import sys
import threading

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxcxr.evaluation import report
from jaxcxr.training import distributed
from jaxcxr.training import errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and reports.')
_JIT_CACHE = flags.DEFINE_string(
    'jit_cache', os.environ.get('JAXCXR_JIT_CACHE', '~/.cache/jaxcxr/xla'),
    'Persistent XLA compilation cache (a resumed or repeated run skips recompiling); "" = off.')
flags.mark_flags_as_required(['config', 'workdir'])

# Exit statuses (jaxcxr.training.errors): 0 done; 1 bad flags (absl); 2 invalid config, data,
# weights or workdir, or non-finite training; 74 a write failed, e.g. a full disk at a checkpoint
# (earlier checkpoints are intact: fix the disk and re-run); 75 preempted by SIGTERM after writing a
# checkpoint (re-run to resume).


def parse_flags(argv):
  """absl's flag parsing, plus a one-line error for a mistyped --config.<key> (not a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:   # what absl's default parser prints
    print(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.',
          file=sys.stderr)
    sys.exit(errors.EXIT_FAILED)
  except (KeyError, AttributeError) as e:   # ml_collections: a field the locked config lacks
    text = str(e.args[0]) if e.args else str(e)
    if text[:1] in '"\'' and '\\n' in text:   # AttributeError wraps the KeyError's repr
      text = ast.literal_eval(text)
    key, _, hint = text.partition('\n')
    key = key.strip('"\'')
    flag = next((a.split('=')[0] for a in argv[1:]
                 if a.startswith('--config.') and f'.{key}' in a.split('=')[0]), '--config')
    print(f'FATAL Flags parsing error: {flag}: the config has no key {key!r}. {hint}'.rstrip(),
          file=sys.stderr)
    sys.exit(errors.EXIT_FAILED)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed.maybe_initialize()
  distributed.enable_compilation_cache(_JIT_CACHE.value)
  try:
    summary = report.train_and_report(_CONFIG.value, _WORKDIR.value)
  except errors.Preempted:
    sys.exit(errors.EXIT_PREEMPTED)
  except (ValueError, FileNotFoundError, errors.NonFiniteError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  except OSError as e:
    # After a failed write (a full disk) the other buffered writers fail again at exit: Orbax's
    # write futures (asyncio logs each with a traceback, "exception was never retrieved") and
    # TensorBoard's event thread and atexit flush. This message already reports the cause; keep it
    # the last thing printed.
    logging.getLogger('asyncio').setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None
    print(f'error: {e}', file=sys.stderr)
    sys.exit(errors.EXIT_IO_ERROR)
  keys = [k for k in summary if k.startswith(summary['split'] + '_')]
  print(' '.join(f'{k}={summary[k]:.4f}' for k in keys), file=sys.stderr)
  print(f'Results in {os.path.abspath(_WORKDIR.value)}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
