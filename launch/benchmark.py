r"""Model benchmark (not a test): JAX train / eval / Grad-CAM images/s vs PyTorch, compile, memory.

  python -m launch.benchmark --archs=vgg19,resnet101,densenet201 --image_size=128 --batch=16 \
      --steps=5 --torch --out=bench.json

Each architecture runs in its own subprocess (peak memory per arch) with a fresh persistent
compilation cache; a second subprocess re-compiles the train step from that cache (warm compile).
`--torch` times the same step in torchvision in a third subprocess (same model, batch, resolution,
threads = cores, SGD momentum). `densenet201:me` means `memory_efficient=True`.
Prints a table and writes JSON. See docs/PERFORMANCE.md.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from jaxcxr.tools import benchmark
from jaxcxr.tools import benchmark_convs
from jaxcxr.training import distributed

_ARCHS = flags.DEFINE_list('archs', ['vgg19', 'resnet101', 'densenet201'],
                           'Models; suffix ":me" = DenseNet memory_efficient=True.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Input side.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per part (median), after 1 warm-up.')
_PARTS = flags.DEFINE_list('parts', ['train', 'eval', 'gradcam'], 'JAX parts to time.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time torchvision (train step + inference).')
_CHANNELS_LAST = flags.DEFINE_bool('channels_last', False,
                                   'torch: channels_last memory format (model and input).')
_WARM = flags.DEFINE_bool('warm_compile', True, 'Re-compile from the persistent cache.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (empty: none).')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Side of the float32 matmul FLOP/s probe.')
_CONV_PROBE = flags.DEFINE_bool('conv_probe', False,
                                'Only time fwd / dx / dW convs per layer shape (jaxcxr.benchmark_convs).')
_TIMEOUT = flags.DEFINE_integer('timeout', 3600, 'Seconds per subprocess.')
# Internal: run one measurement in this process and write JSON to --worker_out.
_WORKER = flags.DEFINE_enum('worker', '', ['', 'jax', 'compile', 'torch'], 'internal')
_WORKER_OUT = flags.DEFINE_string('worker_out', '', 'internal')
_CACHE_DIR = flags.DEFINE_string('cache_dir', '', 'internal: persistent compilation cache dir')


def _split_arch(spec: str) -> tuple[str, dict]:
  name, _, suffix = spec.partition(':')
  return name, ({'memory_efficient': True} if suffix == 'me' else {})


# ----------------------------------------------------------------------------- workers

def _jax_worker(spec: str, parts: tuple[str, ...]) -> dict:
  distributed.enable_compilation_cache(_CACHE_DIR.value, min_compile_secs=0.0)
  name, overrides = _split_arch(spec)
  return benchmark.bench_arch(name, _IMAGE_SIZE.value, _BATCH.value, _STEPS.value, parts=parts,
                              **overrides)


def _torch_worker(spec: str) -> dict:
  """torchvision reference: the same train step (SGD momentum 0.9) and inference, median s."""
  import resource  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  name, overrides = _split_arch(spec)
  model = getattr(torchvision.models, name)(num_classes=3, **overrides)
  fmt = torch.channels_last if _CHANNELS_LAST.value else torch.contiguous_format
  model = model.to(memory_format=fmt)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  b, s = _BATCH.value, _IMAGE_SIZE.value
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (b, 1, s, s), dtype=torch.uint8, generator=gen)
  labels = torch.randint(0, 3, (b,), generator=gen)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

  def model_input():  # same preprocessing as jaxcxr's to_model_input, inside the step
    x = (images.float().expand(-1, 3, -1, -1) / 255.0 - mean) / std
    return x.contiguous(memory_format=fmt)

  def train_step():
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(model_input()), labels)
    loss.backward()
    opt.step()

  def infer():
    model.eval()
    with torch.inference_mode():
      model(model_input())

  def median(fn):
    fn()
    times = []
    for _ in range(_STEPS.value):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    return float(np.median(times))

  step_s = median(train_step)
  eval_s = median(infer)
  return {'arch': spec, 'torch_threads': threads, 'channels_last': _CHANNELS_LAST.value,
          'torch_version': torch.__version__, 'torch_train_step_s': step_s,
          'torch_train_img_s': b / step_s, 'torch_eval_img_s': b / eval_s,
          'torch_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


# ----------------------------------------------------------------------------- driver

def _run_worker(kind: str, spec: str, cache_dir: str, extra: tuple[str, ...] = ()) -> dict:
  with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
    out_path = f.name
  cmd = [sys.executable, '-m', 'launch.benchmark', f'--worker={kind}', f'--archs={spec}',
         f'--worker_out={out_path}', f'--cache_dir={cache_dir}',
         f'--image_size={_IMAGE_SIZE.value}', f'--batch={_BATCH.value}',
         f'--steps={_STEPS.value}', f'--parts={",".join(_PARTS.value)}',
         f'--channels_last={_CHANNELS_LAST.value}', *extra]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT.value, check=False)
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    return {'arch': spec, f'{kind}_error': proc.stderr.strip().splitlines()[-1:]}
  with open(out_path) as f:
    result = json.load(f)
  os.unlink(out_path)
  result[f'{kind}_process_s'] = time.perf_counter() - t0
  return result


def _fmt(v, digits=1) -> str:
  if v is None:
    return '-'
  if isinstance(v, float):
    return f'{v:.{digits}f}'
  return str(v)


def format_table(rows: list[dict]) -> str:
  """Markdown table of the benchmark rows."""
  cols = [('arch', 'arch', 0), ('train img/s', 'train_img_s', 2),
          ('torch train', 'torch_train_img_s', 2), ('ratio', 'train_ratio', 2),
          ('eval img/s', 'eval_img_s', 1), ('torch eval', 'torch_eval_img_s', 1),
          ('ratio', 'eval_ratio', 2), ('Grad-CAM img/s', 'gradcam_img_s', 1),
          ('compile cold s', 'cold_total_s', 1), ('compile warm s', 'warm_total_s', 1),
          ('GFLOP/step', 'train_gflop', 1), ('GFLOP/s', 'train_gflop_s', 1),
          ('% matmul', 'train_pct_peak', 1), ('peak RSS MiB', 'peak_rss_mb', 0),
          ('XLA temp MiB', 'train_temp_mb', 0), ('torch RSS MiB', 'torch_peak_rss_mb', 0)]
  lines = ['| ' + ' | '.join(c[0] for c in cols) + ' |',
           '|' + '|'.join('---' for _ in cols) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(_fmt(r.get(k), d) for _, k, d in cols) + ' |')
  return '\n'.join(lines)


def _derive(row: dict, machine_flops: float) -> dict:
  row = benchmark.achieved(row, machine_flops)
  if 'compile_s' in row:
    row['cold_total_s'] = row['trace_lower_s'] + row['compile_s']
  if 'warm_compile_s' in row:
    row['warm_total_s'] = row['warm_trace_lower_s'] + row['warm_compile_s']
  if row.get('train_flops'):
    row['train_gflop'] = row['train_flops'] / 1e9
  if 'train_frac_peak' in row:
    row['train_pct_peak'] = 100 * row['train_frac_peak']
  for part in ('train', 'eval'):
    if row.get(f'{part}_img_s') and row.get(f'torch_{part}_img_s'):
      row[f'{part}_ratio'] = row[f'{part}_img_s'] / row[f'torch_{part}_img_s']
  return row


def main(argv):
  del argv
  if _WORKER.value:
    spec = _ARCHS.value[0]
    if _WORKER.value == 'torch':
      result = _torch_worker(spec)
    else:
      parts = ('compile',) if _WORKER.value == 'compile' else tuple(_PARTS.value)
      result = _jax_worker(spec, parts)
    with open(_WORKER_OUT.value, 'w') as f:
      json.dump(result, f)
    return

  import jax  # pylint: disable=g-import-not-at-top
  if _CONV_PROBE.value:
    print(f'load average {os.getloadavg()[0]:.2f}')
    print('| (N, S, Cin, Cout, k) | GFLOP | fwd | dx | dW (XLA) | dW (tap matmuls) | GFLOP/s fwd/dx/dW/tap |')
    print('|---|---|---|---|---|---|---|')
    for r in benchmark_convs.probe(steps=_STEPS.value):
      print(f'| {r["shape"]} | {r["gflop"]:.1f} | {r["fwd_ms"]:.0f} ms | {r["dx_ms"]:.0f} ms | '
            f'{r["dw_xla_ms"]:.0f} ms | {r["dw_tap_ms"]:.0f} ms | {r["fwd_gflop_s"]:.1f} / '
            f'{r["dx_gflop_s"]:.1f} / {r["dw_xla_gflop_s"]:.1f} / {r["dw_tap_gflop_s"]:.1f} |')
    return
  machine_flops = benchmark.matmul_flops(_MATMUL_N.value)
  load = os.getloadavg()
  header = {'machine': {'cpus': os.cpu_count(), 'backend': jax.default_backend(),
                        'device': str(jax.devices()[0].device_kind),
                        'jax': jax.__version__, 'loadavg_start': load,
                        'matmul_n': _MATMUL_N.value, 'matmul_gflop_s': machine_flops / 1e9,
                        'xla_flags': os.environ.get('XLA_FLAGS', '')},
            'command': ' '.join(sys.argv)}
  print(f'{header["machine"]["cpus"]} CPUs, {header["machine"]["device"]}; load average '
        f'{load[0]:.2f}; float32 {_MATMUL_N.value}^2 matmul: {machine_flops / 1e9:.1f} GFLOP/s',
        flush=True)
  rows = []
  for spec in _ARCHS.value:
    with tempfile.TemporaryDirectory(prefix='jaxcxr_bench_cache_') as cache:
      row = _run_worker('jax', spec, cache)
      if _WARM.value and 'jax_error' not in row:
        warm = _run_worker('compile', spec, cache)
        row.update({'warm_compile_s': warm.get('compile_s'),
                    'warm_trace_lower_s': warm.get('trace_lower_s')})
    if _TORCH.value:
      t = _run_worker('torch', spec, '')
      row.update({k: v for k, v in t.items() if k != 'arch'})
    row['arch'] = spec
    row['loadavg_after'] = os.getloadavg()
    rows.append(_derive(row, machine_flops))
    print(f'{spec}: done (load {row["loadavg_after"][0]:.2f})', flush=True)
  print(format_table(rows))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump({**header, 'rows': rows}, f, indent=2)
    print(f'Wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
