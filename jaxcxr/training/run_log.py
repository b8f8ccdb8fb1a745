"""Run logging: `metrics.jsonl`, TensorBoard event files (tensorboardX), a tqdm progress bar, and
what a command prints besides them (`quiet_library_logs`).

Only process 0 writes. Every row carries `kind` ('train', 'epoch', 'final', ...) and `step`; on
resume, rows newer than the restored step are dropped so the log matches the resumed trajectory.
"""

import json
import os
import sys
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging as absl_logging

METRICS_FILE = 'metrics.jsonl'


def quiet_library_logs(verbose: bool = False) -> None:
  """Keeps a command's output to its own lines: progress bar, epoch rows, summary and errors.

  Orbax, TFDS and Grain log every step at INFO through absl (about 900 of the 950 lines of the
  default run). Unless `verbose` (a launcher's absl --verbosity/-v flag was given), logging drops
  to WARNING and TFDS draws its progress bars only on a terminal, like the training bar.
  """
  if verbose:
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  if not sys.stderr.isatty():
    tfds.display_progress_bar(False)


def _jsonable(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, 'dtype'):
    v = np.asarray(v).tolist()
  return v


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch (None when tensorboardX is missing).

  tensorboardX imports torch at module level whenever torch is installed (3 s of start-up and
  hundreds of MB, measured; training never needs torch), and falls back to numpy when that import
  fails. Where torch is not loaded already, it is hidden from that one import.
  """
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:  # TensorBoard files are a convenience; metrics.jsonl is the record.
    return None
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter


class RunLog:
  """Writes one training run's scalars."""

  def __init__(self, workdir: str, *, resume_step: int = 0, total_steps: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    writer = _summary_writer_class()
    self._tb = writer(os.path.join(workdir, 'tensorboard')) if writer else None
    self._bar = tqdm.tqdm(
      total=total_steps,
      initial=resume_step,
      unit='step',
      dynamic_ncols=True,
      file=sys.stderr,
      disable=None,
      mininterval=2.0,
    )

  def _truncate_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip()]
    keep = []
    for r in rows:
      try:
        row = json.loads(r)
      except json.JSONDecodeError:  # a row cut short (e.g. disk full mid-write): drop it
        continue
      if row.get('step', 0) <= step:
        keep.append(r if r.endswith('\n') else r + '\n')
    if keep != rows:
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, kind: str, step: int, scalars: dict[str, Any]):
    if not self.enabled:
      return
    row = {'kind': kind, 'step': int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for k, v in row.items():
        if isinstance(v, (int, float)) and k != 'step':
          self._tb.add_scalar(f'{kind}/{k}', v, step)

  def progress(self, step: int, **postfix):
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix(
        {k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False
      )
      self._bar.refresh()

  def message(self, text: str):
    if self.enabled:
      (tqdm.tqdm.write if self._bar is not None else print)(text, file=sys.stderr)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()


def read_rows(workdir: str, kind: str | None = None) -> list[dict]:
  """Rows of a workdir's metrics.jsonl, optionally of one kind."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # blank or cut-short row
        continue
  return [r for r in rows if isinstance(r, dict) and (kind is None or r.get('kind') == kind)]
