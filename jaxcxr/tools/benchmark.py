"""Model throughput benchmark: train / eval / Grad-CAM images/s, compile time, FLOP/s, memory.

Times the real jitted `jaxcxr.training.steps.train_step` (SGD with momentum from `jaxcxr.training.optim`, state
donated), `jaxcxr.training.steps.eval_step` and `jaxcxr.evaluation.gradcam.grad_cam` on random uint8 batches, and
reports each step's FLOPs from XLA's cost analysis next to the machine's measured dense float32
matmul FLOP/s. The entry point `launch.benchmark` runs each architecture in its own process (clean
peak memory, clean compilation cache) and adds the PyTorch reference. Library code: no torch here.
"""

import functools
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcxr import models
from jaxcxr.evaluation import gradcam
from jaxcxr.training import optim
from jaxcxr.training import state as state_lib
from jaxcxr.training import steps as steps_lib
from jaxcxr.data.preprocess import to_model_input

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
  """Plain SGD + momentum through `jaxcxr.training.optim` (constant schedule, no clipping, no decay)."""
  cfg = ml_collections.ConfigDict({
      'name': 'sgd', 'learning_rate': learning_rate, 'momentum': momentum, 'nesterov': False,
      'weight_decay': 0.0, 'schedule': 'constant', 'warmup_epochs': 0.0, 'min_lr_ratio': 0.0,
      'step_epochs': (), 'step_gamma': 0.1, 'grad_clip_norm': 0.0, 'backbone_lr_mult': 1.0})
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=1, total_steps=1, head_names=())
  return tx


def random_variables(module, image_size: int, seed: int = 0) -> dict:
  """params / batch_stats of `module` filled from numpy (no jitted RNG: see docs/PERFORMANCE.md).

  Shapes come from `jax.eval_shape(module.init)`; kernels get He-scaled normals, biases and BN
  means 0, BN scales and variances 1. Speed does not depend on the values, and this keeps the
  random-number compile (seconds to minutes on a small CPU) out of the benchmark.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda k, x: module.init({'params': k, 'dropout': k}, x, train=False),
                          jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim > 1:   # conv HWIO / dense (in, out)
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if 'scale' in name or "'var'" in name:
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  out = {k: jax.tree_util.tree_map_with_path(fill, shapes[k])
         for k in ('params', 'batch_stats') if k in shapes}
  return jax.device_put(out)


def make_state(module, image_size: int, seed: int = 0) -> state_lib.TrainState:
  """A `jaxcxr.training.state.TrainState` with random weights and SGD-momentum optimizer state."""
  variables = random_variables(module, image_size, seed)
  return state_lib.TrainState.create(
      apply_fn=module.apply, params=variables['params'], tx=sgd_optimizer(),
      batch_stats=variables.get('batch_stats', {}), lr_scale=jnp.ones((), jnp.float32))


def random_batch(batch_size: int, image_size: int, seed: int = 0) -> dict:
  """A loader-shaped batch: uint8 (B, S, S, 1) grey images and int32 labels."""
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.integers(0, 256, (batch_size, image_size, image_size, 1),
                                            np.uint8)),
          'label': jnp.asarray(rng.integers(0, NUM_CLASSES, (batch_size,), np.int32))}


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _temp_mb(compiled) -> float:
  mem = compiled.memory_analysis()
  return float(getattr(mem, 'temp_size_in_bytes', float('nan'))) / 2**20


def compile_train_step(module, state, batch, key) -> tuple[Any, dict]:
  """Traces, lowers and compiles the donated train step; returns (executable, timings)."""
  step = jax.jit(functools.partial(steps_lib.train_step, dtype=jnp.float32,
                                   label_smoothing=0.0, class_weights=None), donate_argnums=0)
  del module
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, key)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, {'trace_lower_s': t1 - t0, 'compile_s': t2 - t1,
                    'train_flops': _cost_flops(compiled), 'train_temp_mb': _temp_mb(compiled)}


def bench_arch(arch: str, image_size: int, batch_size: int, steps: int, *,
               parts: tuple[str, ...] = ('train', 'eval', 'gradcam'),
               **overrides: Any) -> dict:
  """Benchmarks one architecture in this process.

  Args:
    arch: a `jaxcxr.models.NAMES` entry.
    image_size, batch_size: input side and batch.
    steps: timed steps per part (median), after one untimed warm-up step.
    parts: any of 'train', 'eval', 'gradcam'; 'compile' alone only compiles the train step (for
      timing a warm persistent compilation cache).
    **overrides: model options, e.g. `memory_efficient=True`.

  Returns:
    Flat dict: `compile_s`, `trace_lower_s`, `train_flops` (per step), `train_temp_mb` (XLA
    temporaries), `train_img_s`, `eval_img_s`, `eval_flops`, `gradcam_img_s`, `peak_rss_mb`.
  """
  module = models.build(arch, NUM_CLASSES, **overrides)
  state = make_state(module, image_size)
  batch = random_batch(batch_size, image_size)
  key = jax.random.key(0)
  out: dict[str, Any] = {'arch': arch, 'image_size': image_size, 'batch': batch_size,
                         'steps': steps, **{k: v for k, v in overrides.items()}}
  compiled, timings = compile_train_step(module, state, batch, key)
  out.update(timings)
  if 'train' in parts:
    holder = [state]

    def one_step():
      holder[0], metrics = compiled(holder[0], batch, key)
      return metrics

    out['train_step_s'] = median_seconds(one_step, steps)
    out['train_img_s'] = batch_size / out['train_step_s']
    state = holder[0]
  if 'eval' in parts:
    ev = jax.jit(functools.partial(steps_lib.eval_step, dtype=jnp.float32))
    ev_c = ev.lower(state, batch).compile()
    out['eval_flops'] = _cost_flops(ev_c)
    out['eval_img_s'] = batch_size / median_seconds(lambda: ev_c(state, batch), steps)
  if 'gradcam' in parts:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    x = to_model_input(batch['image'], jnp.float32)
    out['gradcam_img_s'] = batch_size / median_seconds(
        lambda: gradcam.grad_cam(module, variables, x)['cam'], steps)
  out['peak_rss_mb'] = peak_rss_mb()
  return out


def achieved(result: dict, machine_flops: float) -> dict:
  """Adds achieved FLOP/s (XLA FLOPs / step time) and the fraction of the matmul FLOP/s."""
  out = dict(result)
  if 'train_step_s' in out and out.get('train_flops', 0) > 0:
    out['train_gflop_s'] = out['train_flops'] / out['train_step_s'] / 1e9
    out['train_frac_peak'] = out['train_flops'] / out['train_step_s'] / machine_flops
  if 'eval_img_s' in out and out.get('eval_flops', 0) > 0:
    out['eval_gflop_s'] = out['eval_flops'] * out['eval_img_s'] / out['batch'] / 1e9
  return out
