"""Orbax checkpoints: train state, Grain iterator state and host-side loop state.

Layout of a workdir:
  config.json            the resolved config of the run (written once, checked on resume)
  checkpoints/<step>/    periodic and epoch-end checkpoints (max_to_keep), async
                           state/      TrainState (params, batch_stats, opt_state, step, lr_scale)
                           data_iter/  Grain iterator state (one file per process)
                           host/       JSON: epoch, early-stopping and plateau state, history
  best/<step>/           the best checkpoint by the early-stopping metric (state + host only)

Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoints intact. A checkpoint that exists but cannot be read
(truncated or corrupted files) is skipped with a warning and the one before it is used.
"""

import contextlib
import dataclasses
import errno
import json
import logging
import os
import pathlib
import re
import sys
import tempfile
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcxr.training import state as state_lib

CHECKPOINT_DIR = 'checkpoints'
BEST_DIR = 'best'
CONFIG_FILE = 'config.json'


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (full disk, read-only or vanished filesystem).

  The checkpoints written before it are intact (Orbax finalises a step by renaming its temporary
  directory), so the same command resumes from the newest one once the disk is fixed.
  """


def _os_errno(e: BaseException) -> int | None:
  """errno of an I/O failure: an OSError, or TensorStore's ValueError ("[os_error_code='28']")."""
  if isinstance(e, OSError):
    return e.errno if e.errno is not None else errno.EIO
  m = re.search(r"os_error_code='(\d+)'", str(e))
  return int(m.group(1)) if m else None


@contextlib.contextmanager
def _writing(directory: str):
  """Turns an I/O failure while writing a checkpoint into one clear CheckpointWriteError."""
  try:
    yield
  except CheckpointWriteError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    code = _os_errno(e)
    if code is None:
      raise
    directory = os.path.abspath(directory)
    if code == errno.ENOSPC:
      reason, fix = 'the disk is full (no space left on device)', 'free space'
    else:
      reason, fix = os.strerror(code), 'fix the filesystem'
    detail = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    err = CheckpointWriteError(
      f'Could not write a checkpoint to {directory}: {reason}. The checkpoints already there '
      f'are intact; {fix} and re-run the same command to resume from the newest one. '
      f'({type(e).__name__}: {detail})'
    )
    err.errno = code
    raise err from e


def _manager(directory: str, max_to_keep: int | None, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    enable_async_checkpointing=async_save,
    create=True,
    cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
  """Periodic + best checkpoints of one run (a thin layer over two Orbax CheckpointManagers)."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    self.periodic = _manager(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep, async_save)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1, async_save)
    self._unreadable = set()  # periodic steps restore_latest found unreadable

  def save(self, step: int, state: Any, data_iter: Any, host: dict, *, force: bool = True):
    """Saves a periodic checkpoint (async unless disabled).

    Re-saving a step is a no-op, except for a step found unreadable: that one is replaced.
    """
    if step in self.periodic.all_steps():
      if step not in self._unreadable:
        return
      self.periodic.delete(step)
    self._unreadable.discard(step)
    items = {'state': ocp.args.StandardSave(state), 'host': ocp.args.JsonSave(host)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    with _writing(self.periodic.directory):  # also reports a failed earlier async save
      self.periodic.save(step, args=ocp.args.Composite(**items), force=force)

  def save_best(self, step: int, state: Any, host: dict):
    if step in self.best.all_steps():
      return
    with _writing(self.best.directory):
      self.best.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
        force=True,
      )

  def best_step(self) -> int | None:
    """The step best/ holds (the checkpoint the run ships), None when it holds none."""
    return self.best.latest_step()

  def wait(self):
    """Waits for async saves; raises CheckpointWriteError when one failed."""
    with _writing(self.periodic.directory):
      self.periodic.wait_until_finished()
    with _writing(self.best.directory):
      self.best.wait_until_finished()

  def close(self):
    self.periodic.close()
    self.best.close()

  def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest readable periodic checkpoint into `data_iter` (in place).

    Returns:
      (step, state, host) or None when there is no checkpoint. Unreadable checkpoints are skipped
      with a warning, newest first; with None, `data_iter` is left at its start.
    """
    _drop_closed_loop_reports()
    # A failed attempt may already have restored some items (the data iterator among them).
    initial_iter = data_iter.get_state() if data_iter is not None else None
    failed = False
    for step in sorted(self.periodic.all_steps(), reverse=True):
      items = {'state': ocp.args.StandardRestore(abstract_state), 'host': ocp.args.JsonRestore()}
      if data_iter is not None:
        items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.periodic.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
          'Checkpoint %s/%s/%d is unreadable (%s: %s); trying the previous one.',
          self.workdir,
          CHECKPOINT_DIR,
          step,
          type(e).__name__,
          e,
        )
        failed = True
        self._unreadable.add(step)
        continue
      return step, restored['state'], dict(restored['host'])
    if failed and data_iter is not None:
      data_iter.set_state(initial_iter)
    return None

  def restore_best(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    step = self.best_step()
    if step is None:
      return None
    restored = self.best.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()
      ),
    )
    return step, restored['state'], dict(restored['host'])


def check_writable(workdir: str) -> None:
  """Raises ValueError when files cannot be created in `workdir` (read-only mount, permissions).

  A resumed run only reads config.json, so without this probe it would train up to its first
  checkpoint before finding out.
  """
  try:
    fd, probe = tempfile.mkstemp(prefix='.write_test_', dir=workdir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ValueError(
      f'--workdir={workdir!r} is not writable ({e.strerror or e}); checkpoints, logs and the '
      'report are written there. Choose a writable directory or fix its permissions/mount.'
    ) from e


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes config.json, or checks that a resumed run uses the same config.

  Raises:
    ValueError: `workdir` is not writable, or its config.json is another run's.
  """
  check_writable(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    new = json.loads(text)
    diff = _diff(old, new)
    if diff:
      raise ValueError(
        f'{path} was written by a run with a different config; resuming with this one would mix '
        f'two runs. Differences (old -> new): {"; ".join(diff[:10])}. Use a new --workdir, '
        'or the original config.'
      )
    return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)


def _diff(old: Any, new: Any, prefix: str = '') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k, '<absent>'), new.get(k, '<absent>'), f'{prefix}{k}.')
    return out
  return [] if old == new else [f'{prefix[:-1]}: {old!r} -> {new!r}']


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {workdir!r} is not a jaxcxr training workdir. Train first with '
      f'`python -m launch.train --config configs/default.py --workdir {workdir}`.'
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _drop_closed_loop_reports() -> None:
  """Keeps a failed restore's error the last thing printed.

  When a restore fails (a truncated array file), Orbax closes its event loop while TensorStore
  still completes the other reads; each completion callback then reports
  'RuntimeError: Event loop is closed' to sys.unraisablehook, a traceback per array after the real
  error. Drop exactly those reports (installed once per process; the rest go to the previous hook).
  """
  previous = sys.unraisablehook
  if getattr(previous, 'jaxcxr_closed_loop_filter', False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == 'Event loop is closed':
      return
    previous(unraisable)

  hook.jaxcxr_closed_loop_filter = True
  sys.unraisablehook = hook


def read_state_numpy(step_dir: str) -> dict:
  """The saved TrainState of one checkpoint step as a tree of numpy arrays.

  Independent of the device topology it was saved on (8 GPUs, a TPU slice, ...), so a model
  trained anywhere can be evaluated, exported or compared on a CPU.
  """
  _drop_closed_loop_reports()
  path = os.path.join(os.path.abspath(step_dir), 'state')
  # A host-local read: no barrier with the other processes of a multi-host run (the end-of-run
  # report and the OOD fit read the shipped checkpoint on process 0 alone; Orbax's default
  # restore would wait there for processes that never come).
  me = jax.process_index()
  local = ocp.options.MultiprocessingOptions(
    primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'jaxcxr_local_read_{me}'
  )
  handler = ocp.PyTreeCheckpointHandler(multiprocessing_options=local)
  checkpointer = ocp.Checkpointer(handler, multiprocessing_options=local)
  # The item's own metadata (its tree), from the handler: `checkpointer.metadata(path)` would
  # look for the step's _CHECKPOINT_METADATA inside the item folder (it lives one level up) and
  # warn on every read that it is missing.
  meta = handler.metadata(pathlib.Path(path))
  tree = getattr(meta, 'tree', meta)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


@dataclasses.dataclass
class InferenceBundle:
  """Everything inference needs from a trained workdir."""

  config: ml_collections.ConfigDict
  module: Any
  variables: dict
  class_names: tuple[str, ...]
  image_size: int
  step: int

  @property
  def tta(self) -> bool:
    """Whether the run evaluates with test-time augmentation (config.eval.tta; older runs: no)."""
    return bool(self.config.eval.get('tta', False))


def restore_for_inference(workdir: str, which: str = 'best') -> InferenceBundle:
  """Loads the model of a training workdir ('best' checkpoint, or 'latest' periodic one).

  Raises:
    FileNotFoundError: the workdir has no config or no checkpoint, with the command to fix it.
    ValueError: the checkpoint is unreadable, or holds another model than config.json names.
  """
  config = read_config(workdir)
  module, class_names = state_lib.build_model(config)
  abstract = state_lib.abstract_variables(module, config)
  directory = os.path.join(workdir, BEST_DIR if which == 'best' else CHECKPOINT_DIR)
  steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(
      f'No {which!r} checkpoint under {directory}: training has not saved one yet. Run or resume '
      f'`python -m launch.train --config <config> --workdir {workdir}`.'
    )
  step = max(steps)
  path = os.path.join(directory, str(step))
  try:
    tree = read_state_numpy(path)
  except Exception as e:  # pylint: disable=broad-except  (TensorStore reports as ValueError etc.)
    detail = str(e).splitlines()[0][:300] if str(e) else ''
    fix = (
      'Use --which latest (the newest periodic checkpoint).'
      if which == 'best'
      else 'Use --which best, or re-run the training command: it resumes from the checkpoint '
      'before this one and writes this step again.'
    )
    raise ValueError(
      f'The {which!r} checkpoint {path} is unreadable (truncated or corrupted; '
      f'{type(e).__name__}: {detail}). {fix}'
    ) from None
  _check_matches(abstract, tree, directory, config.model.name)
  # A run with config.train.ema_decay > 0 validated and selected its EMA weights: infer with them.
  variables = {'params': tree.get('ema_params') or tree['params']}
  if tree.get('batch_stats'):
    variables['batch_stats'] = tree['batch_stats']
  return InferenceBundle(config, module, variables, class_names, config.data.image_size, step)


def _check_matches(abstract: dict, tree: dict, directory: str, model_name: str) -> None:
  """Raises ValueError when a checkpoint does not hold this model's parameters."""
  want = {
    jax.tree_util.keystr(k): v.shape
    for k, v in jax.tree_util.tree_leaves_with_path({'params': abstract['params']})
  }
  got = {
    jax.tree_util.keystr(k): np.shape(v)
    for k, v in jax.tree_util.tree_leaves_with_path({'params': tree.get('params', {})})
  }
  problems = [
    f'{k}: model {want[k]} vs checkpoint {got.get(k, "missing")}'
    for k in want
    if got.get(k) != want[k]
  ]
  problems += [f'{k}: in the checkpoint but not in {model_name}' for k in got if k not in want]
  if problems:
    raise ValueError(
      f'The checkpoint in {directory} does not fit model {model_name!r} of the workdir config '
      f'({len(problems)} mismatches, e.g. {"; ".join(problems[:3])}). Was config.json edited or '
      'the checkpoint copied from another run?'
    )
