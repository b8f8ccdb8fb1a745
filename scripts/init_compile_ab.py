r"""A/B of the train state's random init compiled at XLA:CPU's default -O2 and at -O0.

  python scripts/init_compile_ab.py                           # cnn_res18_half, resnet101
  python scripts/init_compile_ab.py --models densenet201 --rounds 1

One process, the two variants alternating, each round a fresh `jax.jit` (no in-memory cache; the
persistent cache is off unless configured). Prints compile and run seconds per model and variant,
the largest difference between the two inits' values and the load average. The init runs once per
run, so its compile is what a run start pays (`cpu_options.run_once_options`).
"""

import argparse
import functools
import os
import statistics
import time

import jax
import numpy as np

from configs import base
from jaxcxr.training import cpu_options, optim
from jaxcxr.training import state as state_lib

VARIANTS = {'-O2 (default)': None, '-O0 (run_once_options)': cpu_options.RUN_ONCE}


def _init(name: str, image_size: int):
  config = base.get_base_config()
  with config.unlocked():
    config.model.name = name
    config.data.image_size = image_size
  module, _ = state_lib.build_model(config)
  tx, _ = optim.make_optimizer(config.optim, 10, 100, state_lib.head_names(name))
  return functools.partial(state_lib.create_train_state, config, module, tx)


def _measure(init, options) -> tuple[float, float, list]:
  fn = jax.jit(functools.partial(init), compiler_options=options)  # a new object: no cache hit
  t = time.perf_counter()
  compiled = fn.lower(jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  state = jax.block_until_ready(compiled(jax.random.key(0)))
  return compile_s, time.perf_counter() - t, jax.tree.leaves(state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='cnn_res18_half,resnet101')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--rounds', type=int, default=2)
  args = parser.parse_args()
  print(f'backend {jax.default_backend()}, jax {jax.__version__}, load {os.getloadavg()[0]:.2f}')
  print('| model | variant | compile s | run s | max abs difference to -O2 |')
  print('|---|---|---|---|---|')
  for name in args.models.split(','):
    init = _init(name, args.image_size)
    times = {v: [] for v in VARIANTS}
    leaves = {}
    for _ in range(args.rounds):
      for variant, options in VARIANTS.items():
        c, r, leaves[variant] = _measure(init, options)
        times[variant].append((c, r))
    ref = leaves['-O2 (default)']
    for variant in VARIANTS:
      diff = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(ref, leaves[variant], strict=True)
        if np.issubdtype(np.asarray(a).dtype, np.floating) and np.asarray(a).size
      )
      c = statistics.median(t[0] for t in times[variant])
      r = statistics.median(t[1] for t in times[variant])
      print(f'| {name} | {variant} | {c:.2f} | {r:.3f} | {diff:.1e} |')
  print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
