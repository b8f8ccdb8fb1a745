r"""Benchmarks (not tests). Run them on an otherwise idle machine; see docs/PERFORMANCE.md.

  # JAX vs torchvision, steps alternating, float32 and bfloat16, load-checked (exit 75 when busy):
  python -m launch.benchmark --archs=resnet18,resnet101,vgg19,densenet201 --torch --out=bench.json
  python -m launch.benchmark --archs=densenet201,densenet201:me --torch --dtypes=float32
  # Loop overhead of train_and_evaluate vs its bare jitted step (last line: `loop overhead: N%`):
  python -m launch.benchmark --loop
  # bf16 224 px images/s at the largest batch that fits, vs published PyTorch AMP figures:
  python -m launch.benchmark --accelerator            # (scripts/accelerator_bench.sh)
  # Per-op profile of the full train step (shares by category), and isolated conv probes:
  python -m launch.benchmark --profile --archs=resnet18 --image_size=128 --batch=16
  python -m launch.benchmark --conv_probe
  # Variants of the train step A/B'd in one process, steps alternating (compiler options of
  # config.model.cpu_options, workarounds swapped for XLA's own; jaxcxr/benchmarks/options.py):
  python -m launch.benchmark --option_ab --archs=resnet18,resnet101 --variants=base,onednn --steps=8

The torchvision reference is scripts/torch_reference.py (library code never imports torch).
Exit status: 0 done; 1 bad flags or a failed measurement; 75 refused because the machine was busy
(re-run when it is idle, or pass --allow_load to record numbers marked as taken under load).
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from jaxcxr.benchmarks import accel as benchmark_accel
from jaxcxr.benchmarks import compare as benchmark_compare
from jaxcxr.benchmarks import convs as benchmark_convs
from jaxcxr.benchmarks import guard as benchmark_guard
from jaxcxr.benchmarks import loop as benchmark_loop
from jaxcxr.benchmarks import options as benchmark_options
from jaxcxr.benchmarks import profile as benchmark_profile
from jaxcxr.benchmarks import worker as benchmark_worker
from launch import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODE = flags.DEFINE_enum(
  'mode',
  'compare',
  ['compare', 'loop', 'accelerator', 'profile', 'conv_probe', 'option_ab'],
  'What to measure.',
)
_LOOP = flags.DEFINE_bool('loop', False, 'Same as --mode=loop.')
_ACCEL = flags.DEFINE_bool('accelerator', False, 'Same as --mode=accelerator.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Same as --mode=profile.')
_CONV_PROBE = flags.DEFINE_bool('conv_probe', False, 'Same as --mode=conv_probe.')
_OPTION_AB = flags.DEFINE_bool('option_ab', False, 'Same as --mode=option_ab.')

_ARCHS = flags.DEFINE_list(
  'archs',
  None,
  'Models; ":me" = DenseNet memory_efficient=True, '
  '":scanN" = DenseNet scan_chunk=N (compare, accelerator). '
  'Default: vgg19,resnet101,densenet201 (profile: resnet18).',
)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, 'Input side (default 128; accelerator 224).')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size (compare, profile).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per key and side (median); at least 5.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (compare).')
_PARTS = flags.DEFINE_list('parts', ['train', 'eval'], 'Any of train, eval, gradcam (JAX only).')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time torchvision, alternating step by step.')
_CHANNELS_LAST = flags.DEFINE_bool('channels_last', False, 'torch: channels_last memory format.')
_WARM = flags.DEFINE_bool('warm_compile', True, 'Re-compile from the persistent cache.')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Side of the float32 matmul FLOP/s probe.')
_TIMEOUT = flags.DEFINE_integer('timeout', 3600, 'Seconds a worker may take to answer.')
_VARIANTS = flags.DEFINE_list(
  'variants',
  ['base', 'onednn'],
  '--option_ab: variants (jaxcxr.benchmarks.options.VARIANTS, '
  "'+' combines); speed-ups are against the first.",
)
_OUT = flags.DEFINE_string('out', '', 'JSON output path (empty: none).')

_ALLOW_LOAD = flags.DEFINE_bool(
  'allow_load', False, 'Measure on a busy machine anyway; results are marked UNDER LOAD.'
)
_MAX_LOAD = flags.DEFINE_float(
  'max_load_per_core',
  benchmark_guard.DEFAULT_MAX_LOAD_PER_CORE,
  '1-minute load average limit per core before each measurement.',
)
_MAX_FOREIGN = flags.DEFINE_float(
  'max_foreign_per_core',
  benchmark_guard.DEFAULT_MAX_FOREIGN_CORES_PER_CORE,
  'CPU other processes may use during a measurement, per core.',
)
_SETTLE = flags.DEFINE_float('settle_s', 120.0, 'Seconds to wait for the load to drop first.')

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  os.path.join(_REPO, 'configs', 'tiny.py'),
  '--loop: the training config (data, loader, optimizer).',
)
_LOOP_STEPS = flags.DEFINE_integer('loop_steps', 300, '--loop: timed steps.')
_LOOP_LOG_EVERY = flags.DEFINE_integer('loop_log_every', 25, '--loop: steps per timing window.')
_LOOP_MODEL = flags.DEFINE_string('loop_model', 'cnn_small', '--loop: the tiny model.')
_LOOP_IMAGE_SIZE = flags.DEFINE_integer('loop_image_size', 16, '--loop: the tiny input side.')
_LOOP_PROFILE = flags.DEFINE_bool('loop_profile', True, '--loop: add a cProfile breakdown.')

_START_BATCH = flags.DEFINE_integer('start_batch', 32, '--accelerator: first batch tried.')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 1024, '--accelerator: largest batch tried.')
_BISECT = flags.DEFINE_integer('bisect', 2, '--accelerator: halvings after the first OOM.')
_ACCEL_DTYPE = flags.DEFINE_string('accel_dtype', 'bfloat16', '--accelerator: compute dtype.')

_WORKER = flags.DEFINE_enum('worker', '', ['', 'jax'], 'internal: serve one JAX worker.')
_SETUP = flags.DEFINE_string('setup', '', 'internal: the worker set-up (JSON).')


def _mode() -> str:
  chosen = [
    m
    for m, on in (
      ('loop', _LOOP.value),
      ('accelerator', _ACCEL.value),
      ('profile', _PROFILE.value),
      ('conv_probe', _CONV_PROBE.value),
      ('option_ab', _OPTION_AB.value),
    )
    if on
  ]
  if len(chosen) > 1 or (chosen and _MODE.value != 'compare'):
    raise app.UsageError(f'Choose one mode, got {chosen + [_MODE.value]}.')
  return chosen[0] if chosen else _MODE.value


def _guard_kwargs() -> dict:
  return {
    'allow_load': _ALLOW_LOAD.value,
    'max_load_per_core': _MAX_LOAD.value,
    'max_foreign_per_core': _MAX_FOREIGN.value,
    'settle_s': _SETTLE.value,
  }


def main(argv) -> int:
  del argv
  if _WORKER.value:
    requests, replies = benchmark_worker.protocol_channel()
    benchmark_worker.serve(json.loads(_SETUP.value), requests, replies)
    return 0
  mode = _mode()
  if _STEPS.value < benchmark_compare.MIN_STEPS:
    raise app.UsageError(f'--steps={_STEPS.value}: at least {benchmark_compare.MIN_STEPS}.')
  archs = _ARCHS.value or (
    ['resnet18'] if mode == 'profile' else ['vgg19', 'resnet101', 'densenet201']
  )
  size = _IMAGE_SIZE.value or (224 if mode == 'accelerator' else 128)
  if mode == 'loop':
    return benchmark_loop.loop_main(
      _CONFIG.value,
      steps=_LOOP_STEPS.value,
      log_every=_LOOP_LOG_EVERY.value,
      model=_LOOP_MODEL.value,
      image_size=_LOOP_IMAGE_SIZE.value,
      profile=_LOOP_PROFILE.value,
      out=_OUT.value,
      **_guard_kwargs(),
    )
  if mode == 'accelerator':
    return benchmark_accel.accel_main(
      archs,
      image_size=size,
      dtype=_ACCEL_DTYPE.value,
      steps=_STEPS.value,
      start_batch=_START_BATCH.value,
      max_batch=_MAX_BATCH.value,
      bisect=_BISECT.value,
      out=_OUT.value,
    )
  if mode == 'profile':
    return benchmark_profile.profile_main(
      archs, image_size=size, batch=_BATCH.value, dtypes=_DTYPES.value, out=_OUT.value
    )
  if mode == 'conv_probe':
    return benchmark_convs.probe_main(steps=_STEPS.value)
  if mode == 'option_ab':
    return benchmark_options.option_ab_main(
      archs,
      image_size=size,
      batch=_BATCH.value,
      rounds=_STEPS.value,
      variants=_VARIANTS.value,
      out=_OUT.value,
    )
  torch_cmd = (
    benchmark_compare.python_cmd(os.path.join(_REPO, 'scripts', 'torch_reference.py'))
    if _TORCH.value
    else None
  )
  return benchmark_compare.compare_main(
    archs,
    out=_OUT.value,
    matmul_n=_MATMUL_N.value,
    **_guard_kwargs(),
    jax_cmd=benchmark_compare.python_cmd('-m', 'launch.benchmark', '--worker=jax'),
    torch_cmd=torch_cmd,
    image_size=size,
    batch=_BATCH.value,
    steps=_STEPS.value,
    dtypes=_DTYPES.value,
    parts=_PARTS.value,
    warm_compile=_WARM.value,
    channels_last=_CHANNELS_LAST.value,
    timeout_s=_TIMEOUT.value,
  )


if __name__ == '__main__':
  cli.run(main)
