"""Tiny configs and subprocess runners shared by the training tests."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from configs import tiny
from jaxcxr.training import optim
from jaxcxr.training import state as state_lib
from tests import warm

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data_dir: str, **overrides):
  """configs/tiny.py with `data_dir` and dotted-key overrides applied."""
  c = tiny.get_config()
  overrides = {'data.data_dir': str(data_dir), **overrides}
  with c.unlocked():
    for k, v in overrides.items():
      node = c
      *path, last = k.split('.')
      for p in path:
        node = node[p]
      node[last] = v
  return c, overrides


def init_state(config):
  """(module, jitted fresh TrainState) of `config` (jitted: eager init dispatches op by op)."""
  module, _ = state_lib.build_model(config)
  tx, _ = optim.make_optimizer(config.optim, 10, 100, state_lib.head_names(config.model.name))
  init = functools.partial(state_lib.create_train_state, config, module, tx)
  return module, jax.jit(init)(jax.random.key(0))


def config_flags(overrides: dict) -> list[str]:
  """`overrides` (dotted key -> value) as launch.train's --config.<key>=<value> flags."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def train_args(overrides: dict, workdir, config: str = 'tiny.py') -> list[str]:
  """launch.train's flags: configs/<config>, `workdir`, `overrides` as --config.<key>=<value>."""
  base = ['--config', str(REPO / 'configs' / config), '--workdir', str(workdir)]
  return base + config_flags(overrides)


def train_cmd(overrides: dict, workdir) -> list[str]:
  """`python -m launch.train` with `train_args` (a cold start)."""
  return [sys.executable, '-m', 'launch.train', *train_args(overrides, workdir)]


# The suite compiles hundreds of tiny programs whose run time is negligible; XLA:CPU's LLVM backend
# at -O0 compiles them much faster (test_train.py's four family runs: 52 s -> 31 s, measured).
# tests/conftest.py adds it to XLA_FLAGS for the whole run (in-process and every subprocess that
# inherits the environment). Runs whose asserted numbers were measured with the default
# optimisation (tests/test_learning.py) or whose run time dominates pass `fast_compile=False`.
FAST_COMPILE_XLA_FLAG = '--xla_backend_optimization_level=0'


# The report work a `launch.train` run can leave out when its test reads only the run's checkpoints,
# metrics.jsonl, results.json or output: the PNG figures (~0.9 s a run) and the OOD and robustness
# sections (~0.5 s); the OOD score is fitted either way (launch.predict reads it). The report is
# tested where it is read: tests/test_evaluate.py, test_eval_cli.py, test_ood.py, test_launch.py's
# folder run, test_dicom_privacy.py, the default phantom variant (test_learning.py); the 8-device
# and two-process runs keep it.
# A tiny run: 6.1 s with the full report, 4.2 s without (cold starts, alternating, idle).
LEAN_REPORT = {'eval.figures': False, 'eval.ood': False, 'eval.robustness': False}


# Per-program opt-out, for an in-process loop whose run time dominates its compile time:
# `jax.jit(f, compiler_options=OPTIMISED)` compiles `f` at XLA's default optimisation whatever
# XLA_FLAGS says.
OPTIMISED = {'xla_backend_optimization_level': 2}


def with_fast_compile(xla_flags: str) -> str:
  """`xla_flags` with FAST_COMPILE_XLA_FLAG added (once)."""
  flags = xla_flags.split()
  return ' '.join(flags if FAST_COMPILE_XLA_FLAG in flags else flags + [FAST_COMPILE_XLA_FLAG])


def env(devices: int = 1, fast_compile: bool = True, **extra) -> dict:
  """The environment of a subprocess run: CPU, `devices` host devices, the repo importable."""
  e = dict(os.environ)
  flags = [
    f
    for f in e.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
    and (fast_compile or f != FAST_COMPILE_XLA_FLAG)
  ]
  e['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])
  e['JAX_PLATFORMS'] = 'cpu'
  e['PYTHONPATH'] = str(REPO)
  e.update({k: str(v) for k, v in extra.items()})
  return e


def run_cli(
  module: str, *args, devices: int = 1, timeout: float = 600, fast_compile: bool = True, **extra_env
) -> subprocess.CompletedProcess:
  """`python -m <module> <args>` with `env(...)`, output captured; started warm (tests/warm.py)."""
  return warm.run_module(
    module,
    args,
    env=env(devices, fast_compile=fast_compile, **extra_env),
    cwd=REPO,
    timeout=timeout,
  )


def popen_train(overrides, workdir, devices=1, **extra_env):
  """launch.train in the background (warm, tests/warm.py), its output to pipes: a Popen."""
  return warm.popen(
    'launch.train',
    train_args(overrides, workdir),
    env=env(devices, **extra_env),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )


def run_train(overrides, workdir, devices=1, timeout=600, **extra_env):
  """Runs launch.train in a subprocess (`run_cli`); returns the CompletedProcess."""
  return run_cli(
    'launch.train',
    *train_args(overrides, workdir),
    devices=devices,
    timeout=timeout,
    **extra_env,
  )


def losses(workdir) -> np.ndarray:
  lines = (Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  rows = [json.loads(line) for line in lines if line.strip()]
  return np.array([r['loss'] for r in rows if r['kind'] == 'train'])


def final_params(workdir) -> dict:
  """Flattened params of the newest periodic checkpoint, as numpy."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from jaxcxr.training import checkpoint  # pylint: disable=g-import-not-at-top

  directory = Path(workdir) / 'checkpoints'
  step = max(ocp.utils.checkpoint_steps(directory))
  tree = checkpoint.read_state_numpy(str(directory / str(step)))
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}/')
      else:
        out[f'{prefix}{k}'] = np.asarray(v)

  walk(
    {
      'params': tree['params'],
      'batch_stats': tree.get('batch_stats', {}),
      'opt_state': {'x': _flat_list(tree['opt_state'])},
    },
    '',
  )
  out['step'] = np.asarray(tree['step'])
  return out


def _flat_list(tree):
  return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree))}
