"""The training loop on tiny phantom data: steps, families, sharding, resume, bad configs."""

import json
import os
import signal
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.training import config_checks, errors, loop, optim, steps
from jaxcxr.training import state as state_lib
from tests import train_helpers as th


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Phantom data prepared once for the module (every run reuses it)."""
  from jaxcxr import data  # pylint: disable=g-import-not-at-top

  d = tmp_path_factory.mktemp('tfds')
  config, _ = th.tiny_config(d)
  data.prepare(config.data)
  return d


def test_train_and_evaluate_two_epochs(data_dir, tmp_path):
  config, _ = th.tiny_config(data_dir)
  summary = loop.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = summary['steps'] // 2
  assert summary['steps'] == 2 * steps_per_epoch > 0
  assert summary['train_step_compilations'] == 1  # no recompilation after the first step
  rows = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  epochs = [r for r in rows if r['kind'] == 'epoch']
  assert [r['epoch'] for r in epochs] == [1, 2]
  train_rows = [r for r in rows if r['kind'] == 'train']
  assert len(train_rows) == summary['steps']
  # The logged learning rate comes out of the jitted step: schedule(step - 1) of the head.
  schedule = optim.make_schedule(config.optim, steps_per_epoch, summary['steps'])
  np.testing.assert_allclose(
    [r['learning_rate'] for r in train_rows],
    [float(schedule(r['step'] - 1)) for r in train_rows],
    rtol=1e-5,
  )
  # The cosine schedule anneals, so the run ships (and evaluates) its last epoch.
  assert summary['selected']['rule'] == 'last' and summary['selected']['epoch'] == 2
  assert summary['best_step'] == summary['steps'] == epochs[-1]['step']
  assert 'last epoch' in summary['selected']['why']
  assert 0.0 <= summary['test_accuracy'] <= 1.0
  assert (tmp_path / 'results.json').exists() and (tmp_path / 'config.json').exists()
  assert list((tmp_path / 'tensorboard').iterdir())


@pytest.mark.parametrize(('select', 'schedule'), [('best', 'cosine'), ('auto', 'constant')])
def test_best_epoch_by_metric_is_shipped_when_selected(data_dir, tmp_path, select, schedule):
  """select='best' (or 'auto' with a schedule that does not anneal) ships the best epoch by the
  early-stopping metric, not the last: with mode 'max' on the validation loss the "best" epoch is
  the least trained one, so the two rules cannot coincide."""
  config, _ = th.tiny_config(
    data_dir,
    **{
      'early_stopping.select': select,
      'optim.schedule': schedule,
      'train.num_epochs': 3,
      'early_stopping.metric': 'val_loss',
      'early_stopping.mode': 'max',
    },
  )
  summary = loop.train_and_evaluate(config, str(tmp_path))
  epochs = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  epochs = [r for r in epochs if r['kind'] == 'epoch']
  best = max(epochs, key=lambda r: r['val_loss'])
  assert best['epoch'] < epochs[-1]['epoch']
  assert summary['selected']['rule'] == 'best'
  assert summary['best_step'] == best['step'] and summary['selected']['epoch'] == best['epoch']


def test_train_step_is_traced_once_and_keeps_state_on_nan(data_dir):
  config, _ = th.tiny_config(data_dir)
  module, _ = state_lib.build_model(config)
  tx, _ = optim.make_optimizer(config.optim, 10, 100, state_lib.head_names(config.model.name))
  state = state_lib.create_train_state(config, module, tx, jax.random.key(0))
  step = jax.jit(
    chex.assert_max_traces(
      lambda s, b, k: steps.train_step(
        s, b, k, dtype=jnp.float32, label_smoothing=0.1, class_weights=None
      ),
      n=1,
    )
  )
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.integers(0, 255, (8, 32, 32, 1), dtype=np.uint8),
    'label': rng.integers(0, 3, (8,)).astype(np.int32),
  }
  key = jax.random.key(1)
  for _ in range(3):
    state, metrics = step(state, batch, key)
  assert bool(metrics['finite']) and int(state.step) == 3
  assert np.isfinite(float(metrics['loss']))

  def same(a, b):  # bitwise, NaN == NaN; the step counter aside
    a, b = (jax.tree.map(np.asarray, x.replace(step=0)) for x in (a, b))
    jax.tree.map(np.testing.assert_array_equal, a, b)

  # Poisoned twice through the same compiled step: (1) a NaN learning-rate scale, so the loss is
  # finite but every update NaN; (2) a NaN head bias, so the loss itself is NaN (the uint8 input
  # cannot carry a NaN). Either way the step reports it and drops the whole update: params,
  # optimizer state and BatchNorm statistics stay bitwise those it got; the counter advances.
  head = state_lib.head_names(config.model.name)[0]
  nan_lr = state.replace(lr_scale=jnp.asarray(jnp.nan, jnp.float32))
  nan_weight = state.replace(
    params={
      **state.params,
      head: {**state.params[head], 'bias': jnp.full_like(state.params[head]['bias'], jnp.nan)},
    }
  )
  for poisoned, loss_finite in ((nan_lr, True), (nan_weight, False)):
    after, metrics = step(poisoned, batch, key)
    assert not bool(metrics['finite'])
    assert bool(np.isfinite(float(metrics['loss']))) == loss_finite
    assert int(after.step) == 4
    same(after, poisoned)
  # The batch stats and optimizer state would move on this batch: the checks above can fail.
  moved, metrics = step(state, batch, key)
  assert bool(metrics['finite'])
  for part in ('params', 'opt_state', 'batch_stats'):
    changed = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), getattr(moved, part), getattr(state, part)
    )
    assert any(jax.tree.leaves(changed)), part


@pytest.mark.parametrize(
  ('name', 'overrides', 'first_conv', 'num_batch_stats'),
  [
    ('cnn_small', {}, 'conv1', 0),  # no BatchNorm
    ('resnet18', {'stage_sizes': (1, 1)}, 'conv1', 12),  # 6 BatchNorms, mean and var each
    (
      'densenet121',
      {'growth_rate': 8, 'block_config': (2, 2), 'num_init_features': 16},
      'conv0',
      22,  # norm0, 2 x 2 layers x 2, transition1, norm5
    ),
    ('vgg11_bn', {'cfg': (8, 'M', 16, 'M'), 'classifier_width': 32}, 'features_0', 4),  # 2 BN
  ],
)
def test_each_family_takes_steps(
  data_dir, tmp_path, name, overrides, first_conv, num_batch_stats, monkeypatch
):
  """One epoch (3 steps) per family with tiny widths: the loss stays finite and the steps train
  the model: the head, the first backbone conv and every BatchNorm running statistic moved."""
  import flax.traverse_util  # pylint: disable=g-import-not-at-top

  from jaxcxr import models  # pylint: disable=g-import-not-at-top

  real_build = models.build
  monkeypatch.setattr(models, 'build', lambda n, c, **kw: real_build(n, c, **{**kw, **overrides}))
  started = {}
  real_fresh_state = loop.fresh_state

  def spy(run, key):  # the state training starts from (copied: the step donates it)
    state = real_fresh_state(run, key)
    tree = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats or {}})
    started.update(flax.traverse_util.flatten_dict(tree, sep='/'))
    return state

  monkeypatch.setattr(loop, 'fresh_state', spy)
  config, _ = th.tiny_config(
    data_dir,
    **{
      'model.name': name,
      'train.num_epochs': 1,
      'train.max_steps': 3,
      'checkpoint.every_steps': 100,
    },
  )
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 3
  assert np.all(np.isfinite(th.losses(tmp_path)))
  final = th.final_params(tmp_path)
  assert int(final['step']) == 3
  head = models.HEAD_PARAMS[name]
  for moved in (f'params/{head}/kernel', f'params/{first_conv}/kernel'):
    assert moved in started, moved
    assert not np.array_equal(final[moved], started[moved]), moved
  stats = [k for k in started if k.startswith('batch_stats/')]
  assert len(stats) == num_batch_stats
  for k in stats:
    assert not np.array_equal(final[k], started[k]), k


@pytest.mark.parametrize(
  ('key', 'value', 'match'),
  [
    ('train.batch_size', 7, 'multiple of the device count'),
    ('model.name', 'resnet9000', 'known models'),
    ('optim.schedule', 'linear', 'optim.schedule'),
    ('data.sampling', 'smote', 'data.sampling'),
    ('model.pretrained', '/nonexistent/weights', 'launch.convert'),
    ('data.val_fraction', 0.9, 'val_fraction'),
    ('early_stopping.patience', 0, 'patience'),
  ],
)
def test_bad_config_values(key, value, match):
  config, _ = th.tiny_config('/tmp/unused', **{key: value})
  with pytest.raises(ValueError, match=match):
    config_checks.validate_config(
      config, num_devices=2 if key == 'train.batch_size' else 1, num_processes=1
    )


def test_mistyped_override_names_the_key(tmp_path):
  """One line on stderr naming the flag, the key and the likely fix; no traceback."""
  r = th.run_train({'train.batch_sise': 8}, tmp_path, timeout=120)
  assert r.returncode == errors.EXIT_FAILED
  assert 'Traceback' not in r.stderr + r.stdout
  assert r.stdout == ''
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith(
    "FATAL Flags parsing error: --config.train.batch_sise: the config has no key 'batch_sise'."
  )
  assert '"batch_size"' in lines[0]  # ml_collections' did-you-mean hint


def test_unknown_early_stopping_metric(data_dir, tmp_path):
  config, _ = th.tiny_config(data_dir, **{'early_stopping.metric': 'val_f2'})
  with pytest.raises(ValueError, match='val_macro_f1'):
    loop.train_and_evaluate(config, str(tmp_path))


def test_nonfinite_stops_naming_the_step_and_keeps_checkpoint(data_dir, tmp_path):
  config, _ = th.tiny_config(
    data_dir,
    **{'optim.learning_rate': 1e30, 'optim.grad_clip_norm': 0.0, 'checkpoint.every_steps': 1},
  )
  with pytest.raises(errors.NonFiniteError, match=r'at step \d+') as err:
    loop.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(err.value).split('at step ')[1].split()[0])
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and max(steps) < bad_step
  params = th.final_params(tmp_path)
  assert all(np.all(np.isfinite(v)) for k, v in params.items() if k.startswith('params'))


def test_resume_with_other_config_is_refused(data_dir, tmp_path):
  config, _ = th.tiny_config(data_dir, **{'train.max_steps': 2})
  loop.train_and_evaluate(config, str(tmp_path))
  other, _ = th.tiny_config(data_dir, **{'train.max_steps': 2, 'optim.learning_rate': 0.5})
  with pytest.raises(ValueError, match=r'optim\.learning_rate'):
    loop.train_and_evaluate(other, str(tmp_path))


def test_preemption_check_needs_no_per_step_collective(monkeypatch):
  """With several processes the SIGTERM check is JAX's preemption sync (a local query, no
  collective); without the preemption service, flags are all-gathered every N steps only."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  gathers, queried = [], []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(
    multihost_utils, 'process_allgather', lambda x: gathers.append(x) or np.stack([x, x])
  )
  monkeypatch.setattr(
    multihost_utils, 'reached_preemption_sync_point', lambda step: queried.append(step) or step == 7
  )
  with loop.Preemption(fallback_every=10) as preemption:
    stops = [s for s in range(1, 31) if preemption.reached(s)]
  assert stops == [7] and queried == list(range(1, 31)) and not gathers

  queried.clear()
  jax.config.update('jax_enable_preemption_service', False)
  try:
    with loop.Preemption(fallback_every=10) as preemption:
      assert not any(preemption.reached(s) for s in range(1, 31))
      os.kill(os.getpid(), signal.SIGTERM)  # the Python handler is installed in this mode
      assert [s for s in range(31, 41) if preemption.reached(s)] == [40]
  finally:
    jax.config.update('jax_enable_preemption_service', True)
  assert len(gathers) == 4 and not queried


# ----------------------------------------------------------------------------- subprocess runs


def _wait_for(predicate, proc, timeout=300):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f'run ended early ({proc.returncode}): {proc.communicate()[1]}')
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError('timed out')
    time.sleep(0.05)


def _train_steps_logged(workdir):
  p = Path(workdir) / 'metrics.jsonl'
  if not p.exists():
    return 0
  return sum(1 for line in open(p) if '"kind": "train"' in line)


@pytest.mark.slow
def test_exact_resume_after_sigterm_and_kill9(data_dir, tmp_path):
  overrides = {
    'data.data_dir': data_dir,
    'train.num_epochs': 3,
    'checkpoint.every_steps': 3,
    **th.LEAN_REPORT,
  }
  ref = th.run_train(overrides, tmp_path / 'ref')
  assert ref.returncode == 0, ref.stderr
  report = json.loads((tmp_path / 'ref' / 'report.json').read_text())  # LEAN_REPORT's report
  assert report['figures'] == {} and not list((tmp_path / 'ref').glob('*.png'))
  assert 'ood' not in report and 'robustness' not in report
  want = th.final_params(tmp_path / 'ref')

  # SIGTERM mid-run: checkpoint written, documented exit status, resume is exact.
  work = tmp_path / 'sigterm'
  proc = th.popen_train(overrides, work)
  _wait_for(lambda: _train_steps_logged(work) >= 4, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == errors.EXIT_PREEMPTED, err
  assert 'SIGTERM: checkpoint of step' in err
  again = th.run_train(overrides, work)
  assert again.returncode == 0, again.stderr
  assert 'resuming at step' in again.stderr
  got = th.final_params(work)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bitwise on CPU

  # kill -9 after a checkpoint: the rerun resumes from it and ends bitwise equal.
  work = tmp_path / 'kill9'
  proc = th.popen_train(overrides, work)
  _wait_for((work / 'checkpoints' / '6').exists, proc)
  proc.kill()
  proc.wait()
  again = th.run_train(overrides, work)
  assert again.returncode == 0, again.stderr
  got = th.final_params(work)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  np.testing.assert_array_equal(th.losses(work), th.losses(tmp_path / 'ref'))


def _short_run(data_dir) -> dict:
  """The overrides of the multi-device and multi-process runs: 5 steps of configs/tiny.py.

  A constant learning rate: the step's program then does not depend on the run's length (a
  cosine schedule bakes its step count into it), so the two-process SIGTERM run, 1,000 steps
  long, reuses the two-process program compiled before it (the suite's XLA cache).
  """
  return {
    'data.data_dir': data_dir,
    'train.num_epochs': 1,
    'train.max_steps': 5,
    'optim.schedule': 'constant',
  }


@pytest.fixture(scope='module')
def one_device_run(data_dir, tmp_path_factory):
  """The workdir of `_short_run` on one device in one process: the reference of the 8-device
  and the two-process runs (one run for both; they compare its losses and parameters, and keep
  their own reports whole: the report on 8 devices and in 2 processes)."""
  work = tmp_path_factory.mktemp('one_device') / 'work'
  one = th.run_train({**_short_run(data_dir), **th.LEAN_REPORT}, work, devices=1)
  assert one.returncode == 0, one.stderr
  return work


@pytest.mark.slow
def test_one_vs_eight_devices_same_trajectory(data_dir, one_device_run, tmp_path):
  """Data parallel over 8 simulated devices reproduces the single-device losses.

  Only the reduction order differs (per-device partial sums of the batch mean, BatchNorm moments
  and gradients), so losses agree to float32 round-off amplified over a few steps (rtol 1e-4).
  Parameters: Adam divides each coordinate's gradient by its own RMS, so a coordinate whose
  gradient is at round-off level can move by up to ~lr per step either way; we allow lr/2
  absolute per element (lr = 1e-3) and require the mean difference to stay at round-off (1e-6).
  """
  eight = th.run_train(_short_run(data_dir), tmp_path / 'eight', devices=8)
  assert eight.returncode == 0, eight.stderr
  assert '8 devices' in eight.stderr
  np.testing.assert_allclose(th.losses(tmp_path / 'eight'), th.losses(one_device_run), rtol=1e-4)
  a, b = th.final_params(one_device_run), th.final_params(tmp_path / 'eight')
  for k in a:
    if k.startswith('params'):
      np.testing.assert_allclose(b[k], a[k], rtol=0, atol=5e-4, err_msg=k)
      assert np.mean(np.abs(b[k] - a[k])) < 1e-6, k
  for work in (one_device_run, tmp_path / 'eight'):
    res = json.loads((work / 'results.json').read_text())['summary']
    assert res['train_step_compilations'] == 1


def _two_processes(overrides, work) -> list:
  """launch.train as processes 0 and 1 of one jax.distributed run (gloo on localhost)."""
  import portpicker  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  return [
    th.popen_train(
      overrides,
      work,
      1,
      JAXCXR_COORDINATOR=f'127.0.0.1:{port}',
      JAXCXR_NUM_PROCESSES=2,
      JAXCXR_PROCESS_ID=i,
      JAXCXR_CPU_COLLECTIVES=1,
    )
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one(data_dir, one_device_run, tmp_path):
  """Two processes (gloo collectives on localhost) each feed half the batch; the losses of one
  process on one device (float32 round-off apart, as in the 8-device test)."""
  work = tmp_path / 'multi'
  procs = _two_processes(_short_run(data_dir), work)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err
  assert '2 processes' in outs[0][1]
  np.testing.assert_allclose(th.losses(work), th.losses(one_device_run), rtol=1e-4)


@pytest.mark.slow
def test_two_processes_sigterm_to_one_checkpoints_both_at_one_step(data_dir, tmp_path):
  """SIGTERM to process 1 only: JAX's preemption sync tells process 0 (no per-step collective);
  both write the checkpoint of the same step and exit 75."""
  # `_short_run`'s settings (so the two-process program compiled above), run for 200 epochs.
  overrides = {
    **_short_run(data_dir),
    'train.num_epochs': 200,
    'train.max_steps': -1,  # configs/tiny.py's: no cap
    'checkpoint.every_steps': 1000,
  }
  work = tmp_path / 'multi'
  procs = _two_processes(overrides, work)
  try:
    _wait_for(lambda: _train_steps_logged(work) >= 3, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == errors.EXIT_PREEMPTED, err
  # Process 0 logs; an Orbax save of one step needs both processes, so both saved this step.
  step = int(outs[0][1].split('SIGTERM: checkpoint of step ')[1].split()[0])
  assert int(th.final_params(work)['step']) == step
