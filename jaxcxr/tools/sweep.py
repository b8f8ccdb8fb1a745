"""Sweeps declared beside the configs: expansion, trial names, per-trial status and commands.

A sweep file `configs/sweeps/<name>.py` has, in big_vision's style,

  get_config(arg) -> str | ConfigDict
      str: the base config file[:arg] that every trial trains (e.g. 'configs/densenet201.py');
      ConfigDict: the sweep file is itself the base config (trials run `--config <sweep file>:arg`).
  get_hyper(hyper[, arg]) -> list[dict]
      one dict of dotted config overrides per trial, built with `hyper.sweep/product/chain/zip`.
      The special key 'config' picks the trial's base config file[:arg] (one sweep over several
      experiment files, e.g. configs/vgg19.py and configs/densenet201.py). A 'config.' prefix on
      keys (big_vision's spelling) is accepted and dropped.

Each trial becomes one command, `python -m launch.train --config FILE[:arg] --workdir SUB
--config.k=v ...`, so a trial is reproduced exactly by the command the sweep prints. Everything
here is pure or touches only the sweep's workdir; `launch/sweep.py` runs the commands.
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from etils import epath

from jaxcxr.training.errors import EXIT_PREEMPTED

CONFIG_KEY = 'config'  # trial override naming the base config file[:arg]
RESULTS_FILE = 'results.json'
STATUS_FILE = 'sweep.json'

Override = dict[str, Any]


# ----------------------------------------------------------------------------- hyper combinators


class Hyper:
  """big_vision's `hyper` object: each method returns a list of override dicts."""

  @staticmethod
  def sweep(key: str, values: Iterable[Any]) -> list[Override]:
    """One trial per value of `key`."""
    return [{key: v} for v in values]

  @staticmethod
  def fixed(key: str, value: Any, length: int = 1) -> list[Override]:
    """`length` trials that all set `key` to `value` (to zip with another sweep)."""
    return [{key: value}] * length

  @staticmethod
  def product(sweeps: Sequence[list[Override]]) -> list[Override]:
    """Cartesian product; the first sweep varies slowest."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]

  @staticmethod
  def chain(sweeps: Sequence[list[Override]]) -> list[Override]:
    """The trials of each sweep, one sweep after another."""
    return [dict(t) for s in sweeps for t in s]

  @staticmethod
  def zip(sweeps: Sequence[list[Override]]) -> list[Override]:
    """Element-wise merge of equally long sweeps."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
      raise ValueError(
        f'hyper.zip needs sweeps of equal length, got lengths {[len(s) for s in sweeps]}.'
      )
    return [_merge(combo) for combo in zip(*sweeps, strict=True)]

  # big_vision's spellings.
  chainit = chain
  zipit = zip


def _merge(dicts: Iterable[Override]) -> Override:
  out = {}
  for d in dicts:
    for k, v in d.items():
      if k in out and out[k] != v:
        raise ValueError(f'Sweep sets {k!r} twice in one trial ({out[k]!r} and {v!r}).')
      out[k] = v
  return out


# ----------------------------------------------------------------------------- loading


def split_spec(spec: str) -> tuple[str, str]:
  """'configs/x.py:arg' -> ('configs/x.py', 'arg')."""
  path, _, arg = spec.partition('.py:')
  return (path + '.py', arg) if _ else (spec, '')


def load_module(path: str):
  """Imports a config or sweep file by path (its imports, e.g. `configs.base`, resolve from cwd)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{path}: no such config/sweep file (paths are relative to the '
      f'repository root, e.g. configs/sweeps/seed_models.py).'
    )
  name = 'jaxcxr_cfg_' + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str):
  """The ConfigDict of 'FILE[:arg]', as launch.train would build it."""
  path, arg = split_spec(spec)
  return load_module(path).get_config(arg)


def _strip(key: str) -> str:
  return key[len('config.') :] if key.startswith('config.') else key


def load_trials(spec: str) -> tuple[str, list[Override]]:
  """Expands a sweep file.

  Args:
    spec: 'configs/sweeps/<name>.py[:arg]'.

  Returns:
    (default base config 'FILE[:arg]', one override dict per trial, 'config' key included when the
    sweep sets it).
  """
  path, arg = split_spec(spec)
  module = load_module(path)
  for fn in ('get_config', 'get_hyper'):
    if not hasattr(module, fn):
      raise ValueError(
        f'{path}: a sweep file defines get_config(arg) and get_hyper(hyper); {fn} is missing.'
      )
  base = module.get_config(arg)
  if not isinstance(base, str):  # the sweep file is itself the base config
    base = f'{path}:{arg}' if arg else path
  n_params = len(inspect.signature(module.get_hyper).parameters)
  trials = module.get_hyper(Hyper(), arg) if n_params >= 2 else module.get_hyper(Hyper())
  trials = [{_strip(k): v for k, v in t.items()} for t in trials]
  if not trials:
    raise ValueError(f'{spec}: get_hyper returned no trials.')
  return base, trials


def check_overrides(base: str, trials: Sequence[Override]) -> None:
  """Raises ValueError naming the trial and key that its base config lacks or mistypes."""
  cache = {}
  for i, t in enumerate(trials):
    spec = t.get(CONFIG_KEY, base)
    if spec not in cache:
      cache[spec] = load_config(spec)
    config = cache[spec].copy_and_resolve_references()
    for key, value in t.items():
      if key == CONFIG_KEY:
        continue
      *parents, leaf = key.split('.')
      node = config
      try:
        for p in parents:
          node = node[p]
        node[leaf]  # pylint: disable=pointless-statement
        node[leaf] = value
      except (KeyError, AttributeError) as e:
        raise ValueError(f'Trial {i} of the sweep: {key!r} is not a key of {spec} ({e}).') from e
      except TypeError as e:
        raise ValueError(
          f'Trial {i} of the sweep: {key}={value!r} has the wrong type for {spec} ({e}).'
        ) from e


# ----------------------------------------------------------------------------- trials


@dataclasses.dataclass(frozen=True)
class Trial:
  index: int
  name: str  # sub-workdir name, e.g. '003-config=vgg19,data.sampling=none'
  config: str  # base config file[:arg]
  overrides: Override  # dotted key -> value, without 'config'
  workdir: str
  command: tuple[str, ...]  # argv; argv[0] is 'python' (the sweep runs it with its interpreter)


def format_value(value: Any) -> str:
  """A value as ml_collections' config_flags parses it back (`--config.k=<this>`)."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if value is None:
    return 'None'
  return str(value) if not isinstance(value, float) else repr(value)


def split_config_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits a launcher's argv into (argv for absl, `--config.k=v` flags to pass through)."""
  passthrough = [a for a in argv[1:] if a.startswith('--config.')]
  return [argv[0], *(a for a in argv[1:] if not a.startswith('--config.'))], passthrough


def override_flags(overrides: Override) -> list[str]:
  return [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]


def train_command(
  config: str, workdir: str, overrides: Override = (), extra_flags: Sequence[str] = ()
) -> tuple[str, ...]:
  """argv of one training run: sweep-wide `extra_flags` first, then the trial's overrides."""
  return (
    'python',
    '-m',
    'launch.train',
    '--config',
    config,
    '--workdir',
    workdir,
    *extra_flags,
    *override_flags(dict(overrides)),
  )


def _short(key: str, value: Any) -> str:
  if key == CONFIG_KEY:  # 'configs/vgg19.py:runlocal' -> 'vgg19'
    return os.path.basename(split_spec(value)[0])[: -len('.py')]
  if isinstance(value, float):
    return f'{value:g}'
  return format_value(value)


def trial_name(index: int, trial: Override, keys: Sequence[str]) -> str:
  """'<index>-k=v,k=v' over `keys`, sanitised to [A-Za-z0-9._=,+-] and at most ~100 chars."""
  text = ','.join(f'{k}={_short(k, trial[k])}' for k in keys if k in trial) or 'trial'
  text = re.sub(r'[^A-Za-z0-9._=,+-]', '_', text)
  if len(text) > 90:
    text = text[:80] + '-' + hashlib.sha1(text.encode()).hexdigest()[:8]
  return f'{index:03d}-{text}'


def varying_keys(trials: Sequence[Override]) -> list[str]:
  """Keys whose value differs between trials (all keys when there is one trial), in order."""
  keys = list(dict.fromkeys(k for t in trials for k in t))
  if len(trials) == 1:
    return keys
  sentinel = object()
  return [
    k for k in keys if len({json.dumps(t.get(k, sentinel), default=repr) for t in trials}) > 1
  ]


def make_trials(
  base: str, trials: Sequence[Override], workdir: str, extra_flags: Sequence[str] = ()
) -> list[Trial]:
  """Trial names, workdirs and commands. A swept key may not also be in `extra_flags`."""
  swept = {k for t in trials for k in t}
  for flag in extra_flags:
    key = flag.split('=', 1)[0][len('--config.') :]
    if key in swept:
      raise ValueError(f'{flag} conflicts with the sweep, which sets {key!r} per trial.')
  keys = varying_keys(trials)
  out = []
  for i, t in enumerate(trials):
    name = trial_name(i, t, keys)
    sub = os.path.join(workdir, name)
    config = t.get(CONFIG_KEY, base)
    overrides = {k: v for k, v in t.items() if k != CONFIG_KEY}
    out.append(
      Trial(i, name, config, overrides, sub, train_command(config, sub, overrides, extra_flags))
    )
  return out


# ----------------------------------------------------------------------------- status


def trial_status(workdir: str) -> str:
  """'finished' (results.json), 'interrupted' (started, no results) or 'pending'."""
  d = epath.Path(workdir)
  if (d / RESULTS_FILE).exists():
    return 'finished'
  if d.exists() and any(d.iterdir()):
    return 'interrupted'
  return 'pending'


def read_status(sweep_dir: str) -> dict:
  path = epath.Path(sweep_dir) / STATUS_FILE
  return json.loads(path.read_text()) if path.exists() else {'trials': {}}


def write_status(sweep_dir: str, status: dict) -> None:
  d = epath.Path(sweep_dir)
  d.mkdir(parents=True, exist_ok=True)
  tmp = d / (STATUS_FILE + '.tmp')
  tmp.write_text(json.dumps(status, indent=2, default=repr))
  tmp.replace(d / STATUS_FILE)


def status_entry(
  trial: Trial, status: str, returncode: int | None = None, wall_time_s: float | None = None
) -> dict:
  return {
    'index': trial.index,
    'status': status,
    'returncode': returncode,
    'wall_time_s': wall_time_s,
    'config': trial.config,
    'overrides': trial.overrides,
    'workdir': trial.workdir,
    'command': list(trial.command),
    'updated': time.strftime('%Y-%m-%dT%H:%M:%S'),
  }


def status_after_run(returncode: int, workdir: str) -> str:
  """A finished command's status: preempted runs resume; exit 0 without results is a failure."""
  if returncode == EXIT_PREEMPTED:
    return 'interrupted'
  if returncode == 0 and trial_status(workdir) == 'finished':
    return 'finished'
  return 'failed'


# ----------------------------------------------------------------------------- running


def run_command(argv: Sequence[str], log_path: str | None = None) -> int:
  """Runs one trial with this interpreter, streaming its output (and into `log_path`).

  A SIGTERM sent to the sweep alone is forwarded to the trial, which checkpoints and exits 75.
  """
  argv = [sys.executable, *argv[1:]] if argv[0] == 'python' else list(argv)
  with open(log_path, 'a') if log_path else contextlib.nullcontext() as log:
    proc = subprocess.Popen(
      argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    old = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
      for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if log:
          log.write(line)
          log.flush()
      return proc.wait()
    finally:
      signal.signal(signal.SIGTERM, old)


def run_trials(
  trials: Sequence[Trial], sweep_dir: str, *, runner=run_command, echo=print
) -> dict[int, str]:
  """Runs unfinished trials one after another; returns {index: final status}.

  Finished trials (results.json present) are skipped; interrupted ones are re-run with the same
  command, which resumes them. A failed trial is recorded and the sweep goes on. A preempted trial
  (exit 75) stops the sweep: re-run it to resume. Status goes to `sweep_dir/sweep.json` and each
  trial's output to `sweep_dir/logs/<name>.log` (local sweep dirs only).

  Args:
    trials: from `make_trials`.
    sweep_dir: the sweep's workdir.
    runner: `(argv, log_path) -> returncode`; `run_command` by default.
    echo: where progress lines go.
  """
  status = read_status(sweep_dir)
  previous = dict(status.get('trials', {}))
  status['trials'] = {}  # the current sweep's trials only (a renamed trial's entry is dropped)
  local = '://' not in sweep_dir
  for t in trials:  # every trial is listed from the start (launch.compare shows pending ones)
    old = previous.get(t.name, {})
    status['trials'][t.name] = {
      **status_entry(t, trial_status(t.workdir)),
      **{k: old[k] for k in ('returncode', 'wall_time_s') if k in old},
    }
    if old.get('status') == 'failed' and status['trials'][t.name]['status'] != 'finished':
      status['trials'][t.name]['status'] = 'failed'
  write_status(sweep_dir, status)
  results = {}
  for t in trials:
    st = trial_status(t.workdir)
    if st == 'finished':
      echo(f'[{t.index + 1}/{len(trials)}] {t.name}: finished, skipped.')
      results[t.index] = st
      continue
    old = previous.get(t.name)
    if old and old.get('command') != list(t.command):
      echo(
        f'warning: {t.name} was started with a different command:\n  {old.get("command")}\n'
        f'now:\n  {list(t.command)}'
      )
    echo(
      f'[{t.index + 1}/{len(trials)}] {t.name}: {"resuming" if st == "interrupted" else "starting"}'
      f'\n  {shell_join(t.command)}'
    )
    status['trials'][t.name] = status_entry(t, 'running')
    write_status(sweep_dir, status)
    log_path = None
    if local:
      os.makedirs(os.path.join(sweep_dir, 'logs'), exist_ok=True)
      log_path = os.path.join(sweep_dir, 'logs', t.name + '.log')
    t0 = time.time()
    rc = runner(t.command, log_path)
    st = status_after_run(rc, t.workdir)
    results[t.index] = st
    status['trials'][t.name] = status_entry(t, st, rc, time.time() - t0)
    write_status(sweep_dir, status)
    echo(f'[{t.index + 1}/{len(trials)}] {t.name}: {st} (exit {rc}).')
    if st == 'interrupted':
      echo('Trial preempted; stopping the sweep. Re-run the same command to resume.')
      break
  return results


def shell_join(argv: Sequence[str]) -> str:
  return shlex.join(argv)


def summary_table(trials: Sequence[Trial], results: dict[int, str]) -> str:
  """One line per trial: index, status, name."""
  rows = [
    f'{t.index:>3}  {results.get(t.index, trial_status(t.workdir)):<11}  {t.name}' for t in trials
  ]
  return '\n'.join(['  #  status       trial', *rows])
