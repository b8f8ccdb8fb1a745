"""The benchmark tools (jaxcxr.benchmarks.*, launch.benchmark, scripts/torch_reference.py).

No timing assertions on throughput: the numbers depend on the machine and its load. What is
checked: the real train step runs (and in bfloat16 when asked), the load guard refuses or flags
by its rules, jax and torch steps alternate after one warm-up each, the reported quantities exist
and the derived ratios follow from them, and the CLI's exit statuses.
"""

import cProfile
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models
from jaxcxr.benchmarks import accel as benchmark_accel
from jaxcxr.benchmarks import common as benchmark
from jaxcxr.benchmarks import compare, guard
from jaxcxr.benchmarks import convs as benchmark_convs
from jaxcxr.benchmarks import data as benchmark_data
from jaxcxr.benchmarks import loop as benchmark_loop
from jaxcxr.benchmarks import options as benchmark_options
from jaxcxr.benchmarks import profile as benchmark_profile
from jaxcxr.models import layers
from jaxcxr.training import cpu_options
from tests import warm

REPO = Path(__file__).resolve().parents[1]


def _cli(*flags, timeout=600):
  return warm.run_module('launch.benchmark', flags, env=os.environ, cwd=REPO, timeout=timeout)


# ----------------------------------------------------------------------------- building blocks


def test_random_variables_shapes_and_bn_defaults():
  module = models.build('cnn_bn', 3)
  v = benchmark.random_variables(module, 16)
  shapes = jax.eval_shape(
    lambda k: module.init(k, jnp.zeros((1, 16, 16, 3)), train=False), jax.random.key(0)
  )
  assert jax.tree.map(lambda a: a.shape, v['params']) == jax.tree.map(
    lambda a: a.shape, shapes['params']
  )
  np.testing.assert_array_equal(v['batch_stats']['bn1']['var'], np.ones(16, np.float32))
  np.testing.assert_array_equal(v['batch_stats']['bn1']['mean'], np.zeros(16, np.float32))
  np.testing.assert_array_equal(v['params']['bn1']['scale'], np.ones(16, np.float32))
  assert float(jnp.std(v['params']['conv2']['kernel'])) == pytest.approx(
    np.sqrt(2.0 / (9 * 16)), rel=0.1
  )


def test_compiled_train_step_updates_state_and_reports_cost():
  module = models.build('cnn_bn', 3)
  state = benchmark.make_state(module, 16)
  batch = benchmark.random_batch(4, 16)
  before = np.asarray(state.params['conv1']['kernel'])
  compiled, timings = benchmark.compile_train_step(module, state, batch, jax.random.key(0))
  assert timings['train_flops'] > 0 and timings['compile_s'] >= 0
  assert timings['train_temp_mb'] >= 0
  new_state, metrics = compiled(state, batch, jax.random.key(0))
  assert int(new_state.step) == 1
  assert bool(metrics['finite'])
  assert not np.allclose(np.asarray(new_state.params['conv1']['kernel']), before)


def test_bf16_train_step_asks_for_bf16_convs_and_reports_what_xla_runs():
  """The bf16 column must time a bf16 program: the lowered convs are bf16 (params stay f32);
  what XLA:CPU makes of them (it may upcast to f32) is reported, not assumed."""
  module = models.build('cnn_small', 3, dtype=jnp.bfloat16)
  state = benchmark.make_state(module, 16)
  _, timings = benchmark.compile_train_step(
    module, state, benchmark.random_batch(2, 16), jax.random.key(0), jnp.bfloat16
  )
  # 4 forward convs and their input gradients (not the first); on CPU the 4 weight gradients are
  # im2col matmuls (layers.conv2d), not convolutions, and so are the forward and input gradient of
  # the last conv, whose map (2x2 at 16 px) is smaller than its 3x3 kernel: 3 + 2 convolutions.
  assert timings['lowered_convs'] == {'bf16': 5}, timings['lowered_convs']
  assert sum(timings['compiled_convs'].values()) >= 5
  assert state.params['conv1']['kernel'].dtype == jnp.float32


def test_conv_dtypes_reads_hlo_and_stablehlo():
  hlo = (
    '  %convolution.9 = f32[32,3,3,64]{3,2,1,0} convolution(%p0, %p1), window={size=4x4}\n'
    '  ROOT %c.2 = bf16[2,8,8,16]{3,2,1,0} convolution(%a, %b), window={size=3x3}\n'
  )
  assert benchmark.conv_dtypes(hlo) == {'f32': 1, 'bf16': 1}
  shlo = (
    '%3 = stablehlo.convolution(%1, %2) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, '
    'f], window = {} : (tensor<2x16x16x3xbf16>, tensor<3x3x3x16xbf16>) -> '
    'tensor<2x16x16x16xbf16>'
  )
  assert benchmark.conv_dtypes(shlo) == {'bf16': 1}


def test_matmul_flops_is_2n3_over_the_median_step(monkeypatch):
  """FLOP/s = 2 n^3 / the median of the timed matmuls (warm-up calls untimed), on a scripted
  clock: timed calls of 0.6, 0.1 and 0.2 s give 2 * 64^3 / 0.2 (their mean would give / 0.3)."""
  ticks = iter([10.0, 10.6, 20.0, 20.1, 30.0, 30.2])
  calls = []

  def perf_counter():
    calls.append(len(calls))
    return next(ticks)

  monkeypatch.setattr(benchmark, 'time', types.SimpleNamespace(perf_counter=perf_counter))
  flops = benchmark.matmul_flops(n=64, steps=3)
  assert len(calls) == 6  # start and end of each of the 3 timed calls, none for the warm-ups
  assert flops == pytest.approx(2 * 64**3 / 0.2, rel=1e-12)


def test_tap_matmul_weight_grad_equals_xla():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  g = jax.random.normal(jax.random.key(2), (2, 6, 6, 4))
  ref = jax.vjp(benchmark_convs._conv, x, w)[1](g)[1]
  np.testing.assert_allclose(
    benchmark_convs.tap_matmul_weight_grad(x, g, 3), ref, rtol=1e-5, atol=1e-5
  )
  rows = benchmark_convs.probe(shapes=((1, 4, 2, 2, 1),), steps=1)
  assert rows[0]['dw_tap_rel_diff'] < 1e-5 and rows[0]['fwd_ms'] > 0


# ----------------------------------------------------------------------------- load guard


@pytest.mark.parametrize(
  ('loads', 'settle_s', 'quiet', 'waited'),
  [
    ([0.5], 60, True, 0),  # quiet at once
    ([3.0, 2.0, 1.0], 60, True, 10),  # quiet after two 5 s polls
    ([3.0] * 100, 12, False, 12),  # never quiet: gives up after settle_s
    ([3.0], 0, False, 0),  # no waiting allowed
  ],
)
def test_wait_until_quiet(loads, settle_s, quiet, waited):
  it = iter(loads)
  slept = []
  ok, load1, w = guard.wait_until_quiet(
    1.5, settle_s, poll_s=5, loadavg=lambda: (next(it),), sleep=slept.append
  )
  assert (ok, w) == (quiet, waited) and sum(slept) == waited
  assert (load1 <= 1.5) == quiet


def test_cpu_meter_counts_only_other_processes(monkeypatch):
  busy, own, wall = iter([100.0, 103.0]), iter([10.0, 11.0]), iter([0.0, 2.0])
  monkeypatch.setattr(guard, '_machine_busy_s', lambda: next(busy))
  monkeypatch.setattr(guard, '_own_cpu_s', lambda: next(own))
  monkeypatch.setattr(guard.time, 'perf_counter', lambda: next(wall))
  # 3 busy CPU-seconds in 2 s, 1 of them ours: the others used 1 core on average.
  assert guard.CpuMeter().start().stop() == pytest.approx(1.0)


def test_machine_busy_time_moves_forward():
  first = guard._machine_busy_s()
  if first is None:
    pytest.skip('no /proc/stat on this system')
  sum(i * i for i in range(300_000))  # burn a little CPU
  assert guard._machine_busy_s() > first


def test_judge():
  clean = guard.judge(0.4, 2.1, 0.05, limit=1.5, foreign_limit=0.2)
  assert clean.ok and clean.as_dict()['load_ok']
  busy = guard.judge(2.0, 2.0, 0.9, limit=1.5, foreign_limit=0.2)
  assert not busy.ok and len(busy.problems) == 2
  assert '2.00 > 1.50' in busy.problems[0] and '0.90 cores' in busy.problems[1]
  assert '--allow_load' in guard.busy_message(busy.problems)


def _fake_measure(spec, **kwargs):
  del kwargs
  return {'arch': spec, 'batch': 2, 'jax_train/float32_img_s': 4.0}


def test_run_refuses_a_busy_machine_before_measuring(monkeypatch):
  measured = []
  monkeypatch.setattr(guard, 'wait_until_quiet', lambda limit, settle_s: (False, 5.0, settle_s))
  monkeypatch.setattr(compare, 'measure_arch', lambda spec, **kw: measured.append(spec))
  rows, refusal = compare.run(
    ['a', 'b'],
    allow_load=False,
    max_load_per_core=0.75,
    max_foreign_per_core=0.1,
    settle_s=7,
    log=lambda *_: None,
  )
  assert rows == [] and measured == []
  assert 'load average 5.00' in refusal and 'waiting 7 s' in refusal


def test_run_stops_after_a_contaminated_arch_unless_load_is_allowed(monkeypatch):
  monkeypatch.setattr(guard, 'wait_until_quiet', lambda limit, settle_s: (True, 0.1, 0.0))
  monkeypatch.setattr(guard.CpuMeter, 'stop', lambda self: 1.9)  # others took 1.9 cores
  monkeypatch.setattr(compare, 'measure_arch', _fake_measure)
  kwargs = dict(max_load_per_core=0.75, max_foreign_per_core=0.1, settle_s=0, log=lambda *_: None)
  rows, refusal = compare.run(['a', 'b'], allow_load=False, **kwargs)
  assert [r['arch'] for r in rows] == ['a'] and not rows[0]['load_ok']
  assert 'other processes used 1.90 cores' in refusal
  rows, refusal = compare.run(['a', 'b'], allow_load=True, **kwargs)
  assert refusal is None and [r['arch'] for r in rows] == ['a', 'b']
  assert 'UNDER LOAD (a, b)' in compare.banner(rows)


# ----------------------------------------------------------------------------- orchestration


class _FakeWorker:
  def __init__(self, name, log, seconds):
    self.name, self._log, self._s = name, log, seconds

  def step(self, key):
    self._log.append((self.name, key))
    return self._s


def test_alternate_warms_up_then_interleaves_and_medians():
  log = []
  workers = [_FakeWorker('jax', log, 0.5), _FakeWorker('torch', log, 0.25)]
  times = compare.alternate(workers, 'train/float32', steps=5)
  assert [n for n, _ in log] == ['jax', 'torch'] * 6  # warm-up round, then 5 timed rounds
  assert times == {'jax': [0.5] * 5, 'torch': [0.25] * 5}


def test_derive_and_table():
  row = compare.derive(
    {
      'arch': 'x',
      'batch': 4,
      'jax_train/float32_img_s': 6.0,
      'torch_train/float32_img_s': 3.0,
      'jax_eval/float32_img_s': 10.0,
      'torch_eval/float32_img_s': 20.0,
      'train_flops_float32': 2e9,
      'trace_lower_s_float32': 1.0,
      'compile_s_float32': 2.0,
      'warm_trace_lower_s_float32': 0.5,
      'warm_compile_s_float32': 0.25,
      'load_ok': True,
    },
    machine_flops=10e9,
  )
  assert row['ratio_train/float32'] == pytest.approx(2.0)
  assert row['ratio_eval/float32'] == pytest.approx(0.5)
  assert row['cold_compile_total_s_float32'] == pytest.approx(3.0)
  assert row['warm_compile_total_s_float32'] == pytest.approx(0.75)
  assert row['train_gflop_s_float32'] == pytest.approx(2e9 * 6.0 / 4 / 1e9)
  assert row['train_pct_matmul_float32'] == pytest.approx(100 * 3.0 / 10.0)
  table = compare.format_table([row], ['float32'], ['train', 'eval'])
  assert table.count('\n') == 2
  assert '| x | 6.00 (3.00) 2.00x | 10.00 (20.00) 0.50x | 3.0 / 0.8 |' in table
  assert compare.banner([row]) == ''


def test_parse_spec():
  assert compare.parse_spec('densenet201:me') == ('densenet201', {'memory_efficient': True})
  assert compare.parse_spec('densenet201:scan8') == ('densenet201', {'scan_chunk': 8})
  assert compare.parse_spec('vgg19') == ('vgg19', {})
  for bad in ('vgg19:fast', 'densenet201:scan0', 'densenet201:scan'):
    with pytest.raises(ValueError, match='the suffixes are'):
      compare.parse_spec(bad)


def test_measure_arch_needs_five_steps():
  with pytest.raises(ValueError, match='at least 5'):
    compare.measure_arch(
      'cnn_small',
      jax_cmd=[],
      torch_cmd=None,
      image_size=16,
      batch=2,
      steps=3,
      dtypes=['float32'],
      parts=['train'],
    )


# ----------------------------------------------------------------------------- end to end


def test_cli_refuses_a_busy_machine_with_status_75():
  proc = _cli('--archs=cnn_small', '--max_load_per_core=-1', '--settle_s=0', '--matmul_n=64')
  assert proc.returncode == guard.BUSY_EXIT, proc.stderr[-2000:]
  assert 'Refusing to report benchmark figures' in proc.stderr
  assert '--allow_load' in proc.stderr


def test_measure_arch_with_the_launcher_worker_and_warm_compile():
  row = compare.measure_arch(
    'cnn_small',
    jax_cmd=[sys.executable, '-m', 'launch.benchmark', '--worker=jax'],
    torch_cmd=None,
    image_size=16,
    batch=2,
    steps=5,
    dtypes=['float32'],
    parts=['train', 'eval'],
    timeout_s=600,
  )
  assert 'error' not in row, row.get('error')
  for key in ('train/float32', 'eval/float32'):
    assert len(row[f'jax_{key}_times']) == 5, key
    assert row[f'jax_{key}_img_s'] == pytest.approx(2 / np.median(row[f'jax_{key}_times']))
  # The second process loads the executable from the cache the first one filled.
  assert row['warm_compile_s_float32'] < row['compile_s_float32']
  assert row['jax_peak_rss_mb'] > 0 and row['compiled_convs_float32']


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _torch_reference():
  return _load_script('torch_reference')


def test_torch_reference_autocasts_bf16_and_trains():
  torch = pytest.importorskip('torch')
  ref = _torch_reference().TorchArch(
    {'arch': 'resnet18', 'image_size': 16, 'batch': 2, 'dtypes': ['float32', 'bfloat16']}
  )
  assert ref.keys == ['train/float32', 'train/bfloat16', 'eval/float32', 'eval/bfloat16']
  seen = []
  ref.model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
  before = ref.model.fc.weight.detach().clone()
  for key in ref.keys:
    assert ref.run(key) > 0
  assert seen == [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
  assert not torch.equal(before, ref.model.fc.weight)
  assert ref.model.fc.weight.dtype == torch.float32


def test_torch_reference_speaks_the_worker_protocol():
  pytest.importorskip('torchvision')
  w = compare.Worker(
    'torch',
    [sys.executable, str(REPO / 'scripts' / 'torch_reference.py')],
    {'arch': 'resnet18', 'image_size': 16, 'batch': 2, 'dtypes': ['float32'], 'parts': ['eval']},
    timeout_s=300,
  )
  assert w.keys == ['eval/float32'] and w.info['torch_threads'] >= 1
  assert w.step('eval/float32') > 0
  assert w.finish()['peak_rss_mb'] > 0


def test_worker_error_carries_the_stderr_tail():
  crash = [
    sys.executable,
    '-c',
    'import sys; sys.stderr.write("no torchvision model xyz"); sys.exit(3)',
  ]
  with pytest.raises(compare.WorkerError, match=r'(?s)exited with status 3.*no torchvision model'):
    compare.Worker('torch', crash, {'arch': 'xyz'}, timeout_s=60)


def test_worker_that_never_answers_times_out():
  with pytest.raises(compare.WorkerError, match='no answer within 1 s'):
    compare.Worker('jax', [sys.executable, '-c', 'import time; time.sleep(30)'], {}, timeout_s=1)


# ----------------------------------------------------------------------------- loop overhead


def _tiny(data_dir):
  from configs import tiny  # pylint: disable=g-import-not-at-top

  c = tiny.get_config()
  with c.unlocked():
    c.data.data_dir = str(data_dir)
  return c


def test_loop_config_keeps_epoch_ends_out_of_the_timed_steps(tmp_path):
  c = benchmark_loop.loop_config(_tiny(tmp_path), steps=300, log_every=25)
  train = c.data.phantom.num_per_class * 3 * (1 - c.data.val_fraction - c.data.test_fraction)
  assert train / c.train.batch_size > 300 + 1
  assert (c.train.max_steps, c.train.num_epochs, c.train.log_every_steps) == (300, 1, 25)
  assert c.checkpoint.every_steps > 300 and c.model.name == 'cnn_small'
  assert c.data.image_size == 16 and c.data.phantom.image_size == 32
  with pytest.raises(ValueError, match='two windows'):
    benchmark_loop.loop_config(_tiny(tmp_path), steps=30, log_every=25)


def test_window_rates_read_the_loop_log(tmp_path):
  rows = [
    {'kind': 'train', 'step': 10, 'images_per_s': 80.0},
    {'kind': 'epoch', 'step': 10, 'val_loss': 1.0},
    {'kind': 'train', 'step': 20, 'images_per_s': 160.0},
  ]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert benchmark_loop.window_rates(str(tmp_path), 8) == [10.0, 20.0]
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'kind': 'train', 'step': 1}) + '\n')
  with pytest.raises(ValueError, match='no images_per_s'):
    benchmark_loop.window_rates(str(tmp_path), 8)


def test_callees_of_train_loop_per_step(tmp_path, monkeypatch):
  (tmp_path / 'loop.py').write_text(
    'import time\n'
    'def fetch():\n  time.sleep(0.002)\n'
    'def train_loop(n):\n  for _ in range(n):\n    fetch()\n'
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  spec = importlib.util.spec_from_file_location('loop', tmp_path / 'loop.py')
  fake = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fake)
  prof = cProfile.Profile()
  prof.runcall(fake.train_loop, 10)
  callees = dict(benchmark_loop._callees(prof, 'train_loop', steps=10))
  ((name, ms),) = [(k, v) for k, v in callees.items() if k.startswith('fetch')]
  assert 2.0 <= ms < 50.0, (name, ms)


def test_in_memory_loader_cycles_its_batches_with_a_state():
  batches = [
    {'image': np.full((2, 4, 4, 1), i, np.uint8), 'label': np.zeros(2, np.int32)} for i in range(3)
  ]
  it = benchmark_loop.in_memory_loader(batches)('data_cfg', 'handle', local_batch_size=2, seed=0)
  seen = [int(next(it)['image'][0, 0, 0, 0]) for _ in range(7)]
  assert seen == [0, 1, 2, 0, 1, 2, 0]
  state = it.get_state()
  nxt = int(next(it)['image'][0, 0, 0, 0])
  it.set_state(state)
  assert int(next(it)['image'][0, 0, 0, 0]) == nxt == 1


def test_loop_main_measures_the_real_loop(tmp_path, capsys):
  out = tmp_path / 'loop.json'
  status = benchmark_loop.loop_main(
    _tiny(tmp_path / 'tfds'),
    steps=20,
    log_every=10,
    model='cnn_small',
    image_size=16,
    profile=False,
    out=str(out),
    allow_load=True,
    max_load_per_core=0.75,
    max_foreign_per_core=0.1,
    settle_s=0,
  )
  assert status == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert re.fullmatch(r'loop overhead: -?\d+%', printed[-1]), printed[-3:]
  r = json.loads(out.read_text())
  assert len(r['loop_window_steps_per_s']) == 2  # steps 10 and 20
  assert len(r['loop_memory_window_steps_per_s']) == 2
  assert r['overhead_with_pipeline_pct'] == pytest.approx(
    100 * (r['bare_steps_per_s'] / np.median(r['loop_window_steps_per_s']) - 1)
  )
  assert r['overhead_pct'] == pytest.approx(
    100 * (r['bare_steps_per_s'] / np.median(r['loop_memory_window_steps_per_s']) - 1)
  )
  assert printed[-2].startswith('with the real data pipeline on the same cores: ')
  assert r['bare_steps_per_s'] > 0 and r['loader_next_ms'] > 0 and 'load_ok' in r


# ----------------------------------------------------------------------------- accelerator


def _fits_below(limit, calls):
  def fits(b):
    calls.append(b)
    if b > limit:
      raise RuntimeError(f'RESOURCE_EXHAUSTED: Out of memory while trying to allocate {b} MiB')
    return {'b': b}

  return fits


@pytest.mark.parametrize(
  ('limit', 'start', 'max_batch', 'multiple', 'bisect', 'best', 'tried'),
  [
    (100, 32, 1024, 8, 2, 96, [32, 64, 128, 96, 112]),  # double to the first OOM, then bisect
    (100, 32, 1024, 8, 0, 64, [32, 64, 128]),
    (10_000, 32, 256, 8, 2, 256, [32, 64, 128, 256]),  # capped by max_batch, no OOM
    (100, 30, 1024, 8, 1, 96, [32, 64, 128, 96]),  # rounded up to the device multiple
  ],
)
def test_search_batch(limit, start, max_batch, multiple, bisect, best, tried):
  calls = []
  b, result, trials = benchmark_accel.search_batch(
    _fits_below(limit, calls), start=start, max_batch=max_batch, multiple=multiple, bisect=bisect
  )
  assert (b, result, calls) == (best, {'b': best}, tried)
  assert [t for t, ok in trials if ok][-1] == best


def test_search_batch_errors():
  with pytest.raises(RuntimeError, match='batch 32 does not fit'):
    benchmark_accel.search_batch(_fits_below(8, []), start=32, max_batch=64, multiple=1)

  def broken(b):
    raise ValueError(f'shape mismatch at {b}')

  with pytest.raises(ValueError, match='shape mismatch'):  # not an OOM: never swallowed
    benchmark_accel.search_batch(broken, start=32, max_batch=64, multiple=1)


def test_accelerator_table_sets_published_figures_beside_ours():
  header = {
    'device': '1 x NVIDIA H100 (gpu)',
    'jax': '0.x',
    'image_size': 224,
    'dtype': 'bfloat16',
    'steps': 10,
  }
  row = {
    'arch': 'resnet101',
    'batch': 256,
    'train_img_s': 1496.0,
    'eval_img_s': 4000.0,
    'compile_s': 30.0,
    'published_img_s': 748,
    'published_source': 'timm, RTX 3090, AMP',
    'vs_published': 2.0,
  }
  table = benchmark_accel.format_table(header, [row])
  assert '| resnet101 | 256 | 1496.0 | 4000.0 | 30.0 | 748 (timm, RTX 3090, AMP) | 2.00x |' in table
  assert benchmark_accel.PUBLISHED['resnet50'][0] == 2470


def test_accelerator_script_smoke_on_cpu(tmp_path):
  out = tmp_path / 'accel.json'
  proc = subprocess.run(
    ['bash', str(REPO / 'scripts' / 'accelerator_bench.sh'), '--smoke'],
    cwd=tmp_path,
    env={**os.environ, 'OUT': str(out)},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  assert [(r['arch'], r['batch']) for r in rows] == [('cnn_small', 4)]
  assert [b for b, _ in rows[0]['trials']] == [2, 4]
  assert rows[0]['train_img_s'] > 0 and rows[0]['eval_img_s'] > 0 and rows[0]['compile_s'] > 0
  assert '| cnn_small | 4 |' in proc.stdout


# ----------------------------------------------------------------------------- loader benchmark


def test_benchmark_data_cli_on_phantom_data(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.benchmark_data',
      '--config',
      str(REPO / 'configs' / 'tiny.py'),
      f'--config.data.data_dir={tmp_path}',
      '--workers=0',
      '--num_batches=3',
      '--warmup=1',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for stage in (
    'read + fast parse',
    'augment: one warpAffine + LUT',
    'batch: np.stack',
    'device_put uint8 (1 B/px) + jit to_model_input',
  ):
    assert stage in out, stage
  # One row for 0 workers: images/s, CPU ms per image, img/s if cores free, first batch s.
  row = re.search(r'^\s+0\s+(\d+)\s+([\d.]+|nan)\s+', out, re.M)
  assert row and int(row.group(1)) > 0, out
  assert 'batch 8,' in out  # configs/tiny.py's train.batch_size


def test_benchmark_data_row_survives_zero_cpu_time():
  # Process CPU time ticks in 10 ms steps; a few tiny batches can measure 0 (CI hit a
  # ZeroDivisionError there). The row then says nan instead of crashing the benchmark.
  row = benchmark_data.throughput_row(0, 812.0, 0.0, 0.25, cores=2)
  assert row.split() == ['0', '812', '0.000', 'nan', '0.25']
  assert benchmark_data.throughput_row(4, 100.0, 2.0, 1.0, cores=2).split()[3] == '1000'


# ----------------------------------------------------------------------------- per-op profile

_HLO = """HloModule jit_train_step, entry_computation_layout={(f32[3,3,8,16]{3,2,1,0})->f32[]}

%fused_computation.1 (param_0: f32[3,3,8,16]) -> f32[3,3,16,8] {
  %param_0 = f32[3,3,8,16]{3,2,1,0} parameter(0)
  %reverse.1 = f32[3,3,8,16]{3,2,1,0} reverse(%param_0), dimensions={0,1}
  ROOT %transpose.1 = f32[3,3,16,8]{3,2,1,0} transpose(%reverse.1), dimensions={0,1,3,2}
}

%fused_computation.2 (param_0.1: f32[2,8,8,16], param_1: f32[16]) -> f32[2,8,8,16] {
  %param_0.1 = f32[2,8,8,16]{3,2,1,0} parameter(0)
  %param_1 = f32[16]{0} parameter(1)
  %broadcast.1 = f32[2,8,8,16]{3,2,1,0} broadcast(%param_1), dimensions={3}
  ROOT %multiply.1 = f32[2,8,8,16]{3,2,1,0} multiply(%param_0.1, %broadcast.1), metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/layer1_0/bn1/mul"}
}

ENTRY %main.9 (p0: f32[3,3,8,16], p1: f32[2,8,8,8], /*index=2*/p2: f32[16]) -> f32[] {
  %p0 = f32[3,3,8,16]{3,2,1,0} parameter(0)
  %p1 = f32[2,8,8,8]{3,2,1,0} parameter(1)
  %p2 = f32[16]{0} parameter(2)
  %convolution.1 = f32[2,8,8,16]{3,2,1,0} convolution(%p1, %p0), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(ResNet)/conv1/conv_general_dilated"}
  %convolution.2 = f32[16,3,3,8]{3,2,1,0} convolution(%p1, %convolution.1), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf
  %convolution.3 = f32[2,8,8,8]{3,2,1,0} convolution(%convolution.1, %p0), window={size=3x3 pad=1_2x1_2 lhs_dilate=2x2}, dim_labels=b01f_01oi->b01f, metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/conv1/conv_general_dilated"}
  %copy_reverse_fusion = f32[3,3,16,8]{3,2,1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1
  %multiply_fusion = f32[2,8,8,16]{3,2,1,0} fusion(%convolution.1, %p2), kind=kLoop, calls=%fused_computation.2
  %subtract.1 = f32[16]{0} subtract(%p2, %p2), metadata={op_name="jit(train_step)/sub"}
  ROOT %r = f32[] constant(0)
}
"""  # noqa: E501  (verbatim XLA HLO text: its instruction lines are as long as XLA writes them)


def test_profile_classifies_the_ops_of_a_train_step():
  ops, comps = benchmark_profile.parse_hlo(_HLO)
  assert set(comps) == {'fused_computation.1', 'fused_computation.2', 'main.9'}
  assert ops['convolution.2'].shape == (16, 3, 3, 8) and 'size=8x8' in ops['convolution.2'].window
  kernels = {(3, 3, 8, 16)}
  got = {
    n: benchmark_profile.classify(ops[n], ops, comps, kernels)
    for n in (
      'convolution.1',
      'convolution.2',
      'convolution.3',
      'copy_reverse_fusion',
      'multiply_fusion',
      'subtract.1',
    )
  }
  assert got == {
    'convolution.1': 'conv forward',
    'convolution.2': 'conv weight-grad',  # no metadata, a kernel's shape
    'convolution.3': 'conv input-grad (dilated: strided conv)',
    'copy_reverse_fusion': 'layout: transpose / reverse / copy',
    'multiply_fusion': 'BatchNorm (fwd + bwd)',
    'subtract.1': 'optimizer, finite check, state select',
  }
  events = [
    {'name': 'convolution.2', 'dur': 3000.0},
    {'name': 'convolution.2', 'dur': 1000.0},
    {'name': 'convolution.1', 'dur': 2000.0},
    {'name': 'ThunkExecutor::Execute', 'dur': 9e9},
  ]
  s = benchmark_profile.summarise(events, ops, comps, kernels, steps=2)
  assert s['summed_op_ms'] == pytest.approx(3.0)  # (3 + 1 + 2 ms) over 2 steps
  assert s['categories'][0] == {'category': 'conv weight-grad', 'ms': 2.0, 'share': 2 / 3}
  assert s['top_ops'][0]['op'] == 'convolution.2' and s['top_ops'][0]['window'].startswith(
    'size=8x8'
  )


def test_profile_of_a_real_train_step():
  r = benchmark_profile.profile_train_step('cnn_bn', 16, 2, steps=1)
  assert r['ops_seen'] > 10 and r['summed_op_ms'] > 0 and r['step_ms'] > 0
  shares = {c['category']: c['share'] for c in r['categories']}
  assert sum(shares.values()) == pytest.approx(1.0)
  assert shares.get('conv forward', 0) > 0 and shares.get('BatchNorm (fwd + bwd)', 0) > 0
  assert '| category | ms/step | share |' in benchmark_profile.format_profile(r)


def test_torch_accel_reference_runs_a_step_pair_on_cpu(monkeypatch):
  """The GPU-side torchvision reference (scripts/torch_accel_reference.py), smoke-run on CPU."""
  pytest.importorskip('torchvision')
  monkeypatch.syspath_prepend(str(REPO / 'scripts'))  # it imports torch_reference beside it
  ref = _load_script('torch_accel_reference')
  # The real steps run; their durations are scripted: the first (compiling) call of each part,
  # then `steps` timed ones whose median sets images/s = batch / median.
  scripted = {'train': [5.0, 0.4, 0.1, 0.2], 'eval': [7.0, 0.05, 0.5, 0.1]}
  ran = []
  real_run = ref.TorchArch.run

  def run(self, key):
    real_run(self, key)
    ran.append(key)
    part = key.split('/')[0]
    return scripted[part][sum(k.split('/')[0] == part for k in ran) - 1]

  monkeypatch.setattr(ref.TorchArch, 'run', run)
  row = ref.measure('resnet18', 2, 32, steps=3, dtype='bfloat16', device='cpu')
  assert ran == ['train/bfloat16'] * 4 + ['eval/bfloat16'] * 4
  assert row['arch'] == 'resnet18' and row['batch'] == 2 and row['mode'] == 'eager'
  assert row['first_call_s'] == {'train': 5.0, 'eval': 7.0}
  assert row['train_img_s'] == pytest.approx(2 / 0.2, rel=1e-12)  # median of 0.4, 0.1, 0.2
  assert row['eval_img_s'] == pytest.approx(2 / 0.1, rel=1e-12)  # median of 0.05, 0.5, 0.1


def test_variant_ab_times_every_variant_alternately():
  """Each variant is compiled and timed; speed-ups are against the first; a workaround swapped for
  XLA's own really changes the compiled step (and is restored afterwards); the table names them."""
  conv2d = layers.conv2d
  row = benchmark_options.variant_ab('cnn_small', 16, 2, 5, ['base', 'xla_wgrad', 'ynn+xla_pool'])
  assert layers.conv2d is conv2d
  assert all(row['ms'][v] > 0 for v in row['variants'])
  assert row['speedup']['xla_wgrad'] == pytest.approx(row['ms']['base'] / row['ms']['xla_wgrad'])
  assert row['speedup']['base'] == 1.0
  assert set(row['compile_s']) == {'base', 'xla_wgrad', 'ynn+xla_pool'}
  table = benchmark_options.format_rows([row])
  assert table.splitlines()[3].startswith('| cnn_small (16, 2) | xla_wgrad |')
  assert benchmark_options.parse_variant('ynn+xla_pool')[0] == cpu_options.YNN_FUSION
  with pytest.raises(ValueError, match="variant 'fast'"):
    benchmark_options.parse_variant('base+fast')


def test_xla_wgrad_variant_traces_xla_s_own_weight_gradient():
  """Under `xla_wgrad` the traced gradient has no im2col concatenation of strided taps."""
  x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))

  def grad():
    return str(jax.make_jaxpr(jax.grad(lambda k: layers.conv2d(x, k, 1, 1).sum()))(k))

  with benchmark_options.VARIANTS['xla_wgrad'][1]():
    xla = grad()
  assert 'concatenate' in grad() and 'concatenate' not in xla


def test_xla_small_maps_variant_traces_xla_s_own_convs_on_a_2x2_map():
  """Under `xla_small_maps` a 3x3 conv on a 2x2 map and its gradients lower to XLA's convs (the
  weight gradient stays a matmul); by default the forward and input gradient are matmuls too."""
  x, k = jnp.ones((2, 2, 2, 4)), jnp.ones((3, 3, 4, 4))

  def counts():
    fn = jax.jit(jax.grad(lambda x, k: jnp.sin(layers.conv2d(x, k, 1, 1)).sum(), argnums=(0, 1)))
    text = fn.lower(x, k).as_text()
    return text.count('stablehlo.convolution'), text.count('stablehlo.dot_general')

  with benchmark_options.VARIANTS['xla_small_maps'][1]():
    xla = counts()
  assert counts() == (0, 3) and xla == (2, 1)


def test_parse_spec_suffixes_combine():
  assert compare.parse_spec('densenet201:scan8:ynn') == (
    'densenet201',
    {'scan_chunk': 8, 'cpu_options': 'ynn'},
  )
  assert compare.split_options({'scan_chunk': 8, 'cpu_options': 'ynn'}) == (
    {'scan_chunk': 8},
    cpu_options.YNN_FUSION,
  )
  with pytest.raises(ValueError, match=':onednn'):
    compare.parse_spec('resnet18:fast')
