"""The JAX side of `benchmark_compare`: one process per architecture, driven step by step.

Protocol (shared with the torchvision reference, scripts/torch_reference.py): the parent starts the
worker with `--setup=<json>`; the worker prepares everything (builds, compiles), writes one JSON
line `{"ready": {...}, "keys": [...]}` and then answers one JSON line per request line:
`{"op": "step", "key": "train/float32"}` -> `{"s": seconds}` (one step, timed in the worker and
blocked until ready), `{"op": "finish"}` -> `{"done": {...}}` and exit. Anything a library prints
goes to stderr: the protocol runs on a duplicate of the original stdout.

Keys are `<part>/<dtype>`: parts 'train' (the donated `train_step`), 'eval' (`eval_step`) and
'gradcam' (float32 only); dtypes 'float32' and 'bfloat16' (the module's compute dtype and the
`to_model_input` dtype; parameters stay float32).
"""

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import jax
import jax.numpy as jnp

from jaxcxr import models
from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import compare as benchmark_compare
from jaxcxr.data.preprocess import to_model_input
from jaxcxr.evaluation import gradcam
from jaxcxr.training import distributed
from jaxcxr.training import steps as steps_lib


def protocol_channel() -> tuple[TextIO, TextIO]:
  """(requests, replies): stdin, and the original stdout; fd 1 then points at stderr."""
  replies = os.fdopen(os.dup(sys.stdout.fileno()), 'w', buffering=1)
  sys.stdout.flush()
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  return sys.stdin, replies


def _timed(fn: Callable[[], Any]) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


class JaxArch:
  """Compiled steps of one architecture, one step per `run(key)` call."""

  def __init__(self, setup: dict):
    self.info: dict[str, Any] = {
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind),
    }
    self._steps: dict[str, Callable[[], Any]] = {}
    arch, size, batch = setup['arch'], int(setup['image_size']), int(setup['batch'])
    overrides, options = benchmark_compare.split_options(setup.get('overrides', {}))
    self.batch = benchmark.random_batch(batch, size)
    key = jax.random.key(0)
    parts = setup.get('parts', ['train', 'eval'])
    for name in setup.get('dtypes', ['float32']):
      dtype = jnp.dtype(name)
      module = models.build(arch, benchmark.NUM_CLASSES, dtype=dtype, **overrides)
      # The train step donates its state: every part reads the current one from this holder.
      holder = [benchmark.make_state(module, size)]
      if 'train' in parts or setup.get('compile_only'):
        compiled, timings = benchmark.compile_train_step(
          module, holder[0], self.batch, key, dtype, compiler_options=options
        )
        self.info.update({f'{k}_{name}': v for k, v in timings.items()})
        self._steps[f'train/{name}'] = functools.partial(self._train, compiled, holder, key)
      if setup.get('compile_only'):
        continue
      if 'eval' in parts:
        ev = jax.jit(functools.partial(steps_lib.eval_step, dtype=dtype))
        ev_c = ev.lower(holder[0], self.batch).compile(options)
        self.info[f'eval_flops_{name}'] = benchmark.cost_flops(ev_c)
        self._steps[f'eval/{name}'] = lambda ev_c=ev_c, h=holder: ev_c(h[0], self.batch)
      if 'gradcam' in parts and name == 'float32':
        x = to_model_input(self.batch['image'], jnp.float32)
        self._steps['gradcam/float32'] = lambda m=module, h=holder, x=x: gradcam.grad_cam(
          m, {'params': h[0].params, 'batch_stats': h[0].batch_stats}, x
        )['cam']
    self.info['peak_rss_after_setup_mb'] = benchmark.peak_rss_mb()

  def _train(self, compiled, holder: list, key) -> Any:
    holder[0], metrics = compiled(holder[0], self.batch, key)
    return metrics

  @property
  def keys(self) -> list[str]:
    return list(self._steps)

  def run(self, key: str) -> float:
    return _timed(self._steps[key])


def serve(setup: dict, requests: TextIO, replies: TextIO) -> None:
  """Prepares `setup` and answers requests until 'finish' (see the module docstring)."""
  if setup.get('cache_dir'):
    distributed.enable_compilation_cache(setup['cache_dir'], min_compile_secs=0.0)
  arch = JaxArch(setup)
  replies.write(json.dumps({'ready': arch.info, 'keys': arch.keys}) + '\n')
  for line in requests:
    req = json.loads(line)
    if req['op'] == 'step':
      replies.write(json.dumps({'s': arch.run(req['key'])}) + '\n')
    elif req['op'] == 'finish':
      replies.write(json.dumps({'done': {'peak_rss_mb': benchmark.peak_rss_mb()}}) + '\n')
      return
    else:
      raise ValueError(f'unknown request {req!r}')
