r"""`launch.train` with one injected fault: the test-side hook of the fault-injection suite.

  JAXCXR_FAULT=<fault> python -m tests.reliability.fault_driver <launch.train flags>

Runs exactly `python -m launch.train <flags>` (same flag parsing, same `main`, same exit statuses)
after patching one library function in this process only. Nothing in jaxcxr reads JAXCXR_FAULT;
the patches never change numerics, so a run driven here is bitwise comparable with a plain one.

Faults:
  hold_eval:<marker>  when the per-epoch validation pass starts (`validation.predict_split` on
                      'validation'), create <marker> and sleep 120 s before evaluating, so a test
                      can kill -9 the process while it is inside the evaluation.
  enospc_save:<n>     the n-th checkpoint write of this process (periodic or best, counted by their
                      host-JSON item) writes half its file into Orbax's temporary directory and
                      then fails with OSError(ENOSPC), as a full disk does mid-save.
  enospc_best:<n>     the same, at the n-th write into best/ (the shipped checkpoint; with
                      early_stopping.select='last' the first is the one at the end of the run).
  nan_update:<k>      training step k (1-based) computes NaN updates (its learning-rate scale is
                      NaN for that step only): a NaN/inf gradient or optimizer overflow.
"""

import errno
import os
import sys
import time

import jax.numpy as jnp

from jaxcxr.training import steps, validation

FAULT_ENV = 'JAXCXR_FAULT'


def _hold_eval(marker: str):
  real = validation.predict_split
  held = []

  def predict_split(probs_fn, data_cfg, handle, split, **kwargs):
    if split == 'validation' and not held:
      held.append(True)
      with open(marker, 'w') as f:
        f.write(str(os.getpid()))
      time.sleep(120)
    return real(probs_fn, data_cfg, handle, split, **kwargs)

  validation.predict_split = predict_split


def json_handler():
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh  # pylint: disable=g-import-not-at-top

  return jh.JsonCheckpointHandler


def enospc_save_fn(n: int, under: str = ''):
  """A replacement for JsonCheckpointHandler._save_fn whose n-th call fails with ENOSPC.

  With `under`, only writes below a folder of that name count (e.g. 'best').
  """
  real = json_handler()._save_fn  # pylint: disable=protected-access
  calls = []

  async def _save_fn(self, x, directory):
    if under and under not in directory.parts:
      return await real(self, x, directory)
    calls.append(str(directory))
    if len(calls) != n:
      return await real(self, x, directory)
    path = directory / self._filename  # pylint: disable=protected-access
    path.write_text('{"partial": ')  # what a full disk leaves behind
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

  return _save_fn


def _nan_update(k: int):
  real = steps.train_step

  def train_step(state, batch, key, **kwargs):
    scale = state.lr_scale
    poisoned = state.replace(lr_scale=jnp.where(state.step == k - 1, jnp.nan, scale))
    new, metrics = real(poisoned, batch, key, **kwargs)
    return new.replace(lr_scale=scale), metrics

  steps.train_step = train_step


def install(spec: str) -> None:
  """Installs the fault named by `spec` ('' installs nothing)."""
  if not spec:
    return
  kind, _, arg = spec.partition(':')
  if kind == 'hold_eval':
    _hold_eval(arg)
  elif kind == 'enospc_save':
    json_handler()._save_fn = enospc_save_fn(int(arg))  # pylint: disable=protected-access
  elif kind == 'enospc_best':
    json_handler()._save_fn = enospc_save_fn(int(arg), under='best')  # pylint: disable=protected-access
  elif kind == 'nan_update':
    _nan_update(int(arg))
  else:
    raise SystemExit(
      f'{FAULT_ENV}={spec!r}: unknown fault (hold_eval:<marker>, '
      'enospc_save:<n>, enospc_best:<n>, nan_update:<k>)'
    )


if __name__ == '__main__':
  from launch import cli  # pylint: disable=g-import-not-at-top
  from launch import train as launch_train  # pylint: disable=g-import-not-at-top  (defines flags)

  install(os.environ.get(FAULT_ENV, ''))
  sys.argv[0] = 'launch.train'
  cli.run(launch_train.main)  # what launch/train.py's __main__ runs
