"""Benchmark building blocks: states, batches, the compiled train step, FLOPs, memory, machine.

The pieces every benchmark mode shares: numpy-filled weights and SGD-momentum train states, the
real jitted `jaxcxr.training.steps.train_step` compiled with its timings, XLA's FLOPs and
temporaries, the machine's measured dense float32 matmul FLOP/s, peak RSS. The modes build on them:
`benchmark_compare` (vs torchvision), `benchmark_loop`, `benchmark_accel`, `benchmark_profile`.
Library code: no torch here.
"""

import collections
import functools
import json
import os
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcxr.training import optim
from jaxcxr.training import state as state_lib
from jaxcxr.training import steps as steps_lib

NUM_CLASSES = 3


def median_seconds(fn: Callable[[], Any], steps: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` (blocked until ready) over `steps` calls after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_flops(n: int = 2048, steps: int = 5) -> float:
  """Measured dense float32 FLOP/s of a jitted (n, n) @ (n, n) matmul (median, 2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  return 2.0 * n**3 / median_seconds(lambda: mm(a, b), steps, warmup=2)


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sgd_optimizer(learning_rate: float = 0.01, momentum: float = 0.9):
  """Plain SGD + momentum through `jaxcxr.training.optim` (constant schedule, no clipping, no
  decay)."""
  cfg = ml_collections.ConfigDict(
    {
      'name': 'sgd',
      'learning_rate': learning_rate,
      'momentum': momentum,
      'nesterov': False,
      'weight_decay': 0.0,
      'schedule': 'constant',
      'warmup_epochs': 0.0,
      'min_lr_ratio': 0.0,
      'step_epochs': (),
      'step_gamma': 0.1,
      'grad_clip_norm': 0.0,
      'backbone_lr_mult': 1.0,
    }
  )
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=1, total_steps=1, head_names=())
  return tx


def random_variables(module, image_size: int, seed: int = 0) -> dict:
  """params / batch_stats of `module` filled from numpy (no jitted RNG: see docs/PERFORMANCE.md).

  Shapes come from `jax.eval_shape(module.init)`; kernels get He-scaled normals, biases and BN
  means 0, BN scales and variances 1. Speed does not depend on the values, and this keeps the
  random-number compile (seconds to minutes on a small CPU) out of the benchmark.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
    lambda k, x: module.init({'params': k, 'dropout': k}, x, train=False), jax.random.key(0), x
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim > 1:  # conv HWIO / dense (in, out)
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if 'scale' in name or "'var'" in name:
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  out = {
    k: jax.tree_util.tree_map_with_path(fill, shapes[k])
    for k in ('params', 'batch_stats')
    if k in shapes
  }
  return jax.device_put(out)


def make_state(module, image_size: int, seed: int = 0) -> state_lib.TrainState:
  """A `jaxcxr.training.state.TrainState` with random weights and SGD-momentum optimizer state."""
  variables = random_variables(module, image_size, seed)
  return state_lib.TrainState.create(
    apply_fn=module.apply,
    params=variables['params'],
    tx=sgd_optimizer(),
    batch_stats=variables.get('batch_stats', {}),
    lr_scale=jnp.ones((), jnp.float32),
  )


def random_batch(batch_size: int, image_size: int, seed: int = 0) -> dict:
  """A loader-shaped batch: uint8 (B, S, S, 1) grey images and int32 labels."""
  rng = np.random.default_rng(seed)
  return {
    'image': jnp.asarray(rng.integers(0, 256, (batch_size, image_size, image_size, 1), np.uint8)),
    'label': jnp.asarray(rng.integers(0, NUM_CLASSES, (batch_size,), np.int32)),
  }


def cost_flops(compiled) -> float:
  """FLOPs of one call of a compiled executable, from XLA's cost analysis (NaN if absent)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def temp_mb(compiled) -> float:
  """XLA temporaries of a compiled executable (activations and scratch of one call), MiB."""
  mem = compiled.memory_analysis()
  return float(getattr(mem, 'temp_size_in_bytes', float('nan'))) / 2**20


_HLO_CONV = re.compile(r'=\s*(\w+)\[[^\]]*\]\S*\s+convolution\(')
_STABLEHLO_CONV = re.compile(r'stablehlo\.convolution.*->\s*tensor<[\dx]*x(\w+)>')


def conv_dtypes(text: str) -> dict[str, int]:
  """Count of convolutions per output dtype in an HLO or StableHLO module text.

  The lowered (StableHLO) program shows what the model asked for; the compiled (optimised HLO)
  one what the backend runs: XLA:CPU, for one, rewrites bf16 convolutions to f32.
  """
  found = _HLO_CONV.findall(text) or _STABLEHLO_CONV.findall(text)
  return dict(collections.Counter(found))


def compile_train_step(
  module, state, batch, key, dtype=None, compiler_options=None
) -> tuple[Any, dict]:
  """Traces, lowers and compiles the donated train step; returns (executable, timings).

  `dtype` is the compute dtype of the input (`to_model_input`); default float32. The module's own
  `dtype` sets the compute dtype of its layers. `compiler_options`: XLA options of this compile
  (e.g. `cpu_options.YNN_FUSION`). Timings: `trace_lower_s`, `compile_s`,
  `train_flops`, `train_temp_mb`, and the conv dtypes asked for (`lowered_convs`) and run
  (`compiled_convs`).
  """
  step = jax.jit(
    functools.partial(
      steps_lib.train_step,
      dtype=jnp.dtype(dtype or jnp.float32),
      label_smoothing=0.0,
      class_weights=None,
    ),
    donate_argnums=0,
  )
  del module
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, key)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options)
  t2 = time.perf_counter()
  return compiled, {
    'trace_lower_s': t1 - t0,
    'compile_s': t2 - t1,
    'train_flops': cost_flops(compiled),
    'train_temp_mb': temp_mb(compiled),
    'lowered_convs': conv_dtypes(lowered.as_text()),
    'compiled_convs': conv_dtypes(compiled.as_text()),
  }


def machine_header(matmul_n: int = 2048) -> dict:
  """What the numbers were taken on: cores, device, versions, load, XLA_FLAGS, matmul FLOP/s."""
  flops = matmul_flops(matmul_n) if matmul_n > 0 else float('nan')
  return {
    'cpus': os.cpu_count(),
    'backend': jax.default_backend(),
    'device': str(jax.devices()[0].device_kind),
    'jax': jax.__version__,
    'loadavg_start': os.getloadavg(),
    'matmul_n': matmul_n,
    'matmul_gflop_s': flops / 1e9,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON ('' path: nothing)."""
  if path:
    with open(path, 'w') as f:
      json.dump(obj, f, indent=2, default=str)
