r"""`launch.train` with one injected fault: the test-side hook of the fault-injection suite.

  JAXCXR_FAULT=<fault> python -m tests.reliability.fault_driver <launch.train flags>

Runs exactly `python -m launch.train <flags>` (same flag parsing, same `main`, same exit statuses)
after patching one library function in this process only. Nothing in jaxcxr reads JAXCXR_FAULT;
the patches never change numerics, so a run driven here is bitwise comparable with a plain one.

Faults:
  hold_eval:<marker>  when the per-epoch validation pass starts (`train.predict_split` on
                      'validation'), create <marker> and sleep 120 s before evaluating, so a test
                      can kill -9 the process while it is inside the evaluation.
  enospc_save:<n>     the n-th checkpoint write of this process (periodic or best, counted by their
                      host-JSON item) writes half its file into Orbax's temporary directory and
                      then fails with OSError(ENOSPC), as a full disk does mid-save.
"""

import errno
import os
import sys
import time

from absl import app

FAULT_ENV = 'JAXCXR_FAULT'


def _hold_eval(marker: str):
  from jaxcxr import train  # pylint: disable=g-import-not-at-top
  real = train.predict_split
  held = []

  def predict_split(eval_fn, state, data_cfg, handle, split, *args, **kwargs):
    if split == 'validation' and not held:
      held.append(True)
      with open(marker, 'w') as f:
        f.write(str(os.getpid()))
      time.sleep(120)
    return real(eval_fn, state, data_cfg, handle, split, *args, **kwargs)

  train.predict_split = predict_split


def _enospc_save(n: int):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh  # pylint: disable=g-import-not-at-top
  real = jh.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access
  calls = []

  async def _save_fn(self, x, directory):
    calls.append(str(directory))
    if len(calls) != n:
      return await real(self, x, directory)
    path = directory / self._filename  # pylint: disable=protected-access
    path.write_text('{"partial": ')   # what a full disk leaves behind
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

  jh.JsonCheckpointHandler._save_fn = _save_fn  # pylint: disable=protected-access


def install(spec: str) -> None:
  """Installs the fault named by `spec` ('' installs nothing)."""
  if not spec:
    return
  kind, _, arg = spec.partition(':')
  if kind == 'hold_eval':
    _hold_eval(arg)
  elif kind == 'enospc_save':
    _enospc_save(int(arg))
  else:
    raise SystemExit(f'{FAULT_ENV}={spec!r}: unknown fault (hold_eval:<marker>, enospc_save:<n>)')


if __name__ == '__main__':
  from launch import train as launch_train  # pylint: disable=g-import-not-at-top  (defines flags)
  install(os.environ.get(FAULT_ENV, ''))
  sys.argv[0] = 'launch.train'
  app.run(launch_train.main, flags_parser=getattr(launch_train, 'parse_flags', None)
          or app.parse_flags_with_usage)
