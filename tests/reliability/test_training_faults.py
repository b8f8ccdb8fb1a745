"""End-to-end faults through `python -m launch.train`: a full disk at a checkpoint save, a truncated
final checkpoint, and NaN updates (error and skip). Each checks the exit status and message, that
no good checkpoint is lost, and (where the run can go on) that the re-run ends bitwise equal to
the uninterrupted reference run."""

import random
import subprocess

import numpy as np
import pytest

from tests import train_helpers as th
from tests.reliability import harness

SEED = 8
EXIT_IO_ERROR = 74  # launch.train: a write failed (full disk); earlier checkpoints intact


def _assert_same_as_reference(work, reference, record):
  """Final state (params, BatchNorm statistics, optimizer state, step) and the train-loss
  trajectory equal the uninterrupted run's bitwise (CPU)."""
  got, want = th.final_params(work), th.final_params(reference)
  differing = sorted(set(got) ^ set(want)) + [
    k for k in want if k in got and not np.array_equal(got[k], want[k])
  ]
  lost = int(not np.array_equal(th.losses(work), th.losses(reference)))
  record(resumes=1, bitwise=not differing, differing=differing[:5], data_lost=lost)
  assert not differing, f'final state differs from the uninterrupted run in {differing}'
  np.testing.assert_array_equal(th.losses(work), th.losses(reference))


def _mount_tmpfs(path, size):
  path.mkdir(parents=True, exist_ok=True)
  try:
    r = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
      capture_output=True,
      text=True,
      check=False,
    )
  except OSError as e:
    return str(e)
  return r.stderr.strip() if r.returncode else ''


@pytest.mark.slow
@pytest.mark.parametrize('disk', ['injected_enospc', 'tmpfs'])
def test_disk_full_at_a_save_then_resume(
  disk, reference, chain_overrides, run_env, tmp_path, record
):
  """The run stops with a clear message naming the workdir and the full disk (exit 74), every
  checkpoint finished before is intact, and once there is space the same command resumes and ends
  bitwise equal to the uninterrupted run."""
  fault = ''
  if disk == 'tmpfs':  # a real full disk: 3 MiB holds ~2 checkpoints of the tiny model
    mnt = tmp_path / 'mnt'
    err = _mount_tmpfs(mnt, '3m')
    if err:
      pytest.skip(f'cannot mount a tmpfs here ({err}); the injected variant covers this path')
    work = mnt / 'work'
  else:
    work = tmp_path / 'work'
    fault = f'enospc_save:{random.Random(SEED).randint(2, 4)}'
  try:
    run = harness.train_run(
      chain_overrides, work, tmp_path / 'full.log', run_env, driver_fault=fault
    )
    rc = run.wait()
    out = run.output()
    problems = harness.clear_failure(
      rc, out, EXIT_IO_ERROR, 'the disk is full', str(work), 'are intact', 're-run the same command'
    )
    kept = harness.committed_steps(work / 'checkpoints')
    unreadable = [s for s in kept if not harness.readable(work / 'checkpoints' / str(s))]
    record(
      fault=f'disk_full_{disk}',
      bad_input=f'disk full at a checkpoint save ({disk})',
      clear=not problems,
      problems=problems,
      data_lost=len(unreadable),
    )
    assert not problems, problems
    assert kept and not unreadable, (kept, unreadable)
    if disk == 'tmpfs':
      subprocess.run(['mount', '-o', 'remount,size=64m', str(mnt)], check=True)
    again = harness.train_run(chain_overrides, work, tmp_path / 'again.log', run_env)
    rc = again.wait()
    assert rc == 0, again.output()[-4000:]
    assert harness.resumed_step(again.output()) == kept[-1]
    _assert_same_as_reference(work, reference, record)
  finally:
    if disk == 'tmpfs':
      subprocess.run(['umount', '-l', str(tmp_path / 'mnt')], check=False)


@pytest.mark.slow
def test_disk_full_at_the_final_shipped_save_then_resume(
  reference, chain_overrides, run_env, tmp_path, record
):
  """select='last' writes best/ once, at the end of the run: a full disk during that save stops
  the run with the same clear message (exit 74), the periodic checkpoints are intact, and the
  re-run resumes, writes the shipped checkpoint of the last step and ends bitwise equal."""
  overrides = dict(chain_overrides, **{'early_stopping.select': 'last'})
  work = tmp_path / 'work'
  run = harness.train_run(
    overrides, work, tmp_path / 'full.log', run_env, driver_fault='enospc_best:1'
  )
  rc = run.wait()
  out = run.output()
  problems = harness.clear_failure(
    rc,
    out,
    EXIT_IO_ERROR,
    'the disk is full',
    str(work / 'best'),
    'are intact',
    're-run the same command',
  )
  kept = harness.committed_steps(work / 'checkpoints')
  unreadable = [s for s in kept if not harness.readable(work / 'checkpoints' / str(s))]
  record(
    fault='disk_full_final_best',
    bad_input='disk full at the final best/ save',
    clear=not problems,
    problems=problems,
    data_lost=len(unreadable),
  )
  assert not problems, problems
  assert kept and not unreadable, (kept, unreadable)
  assert not harness.committed_steps(work / 'best'), 'a failed best/ save left a step behind'
  again = harness.train_run(overrides, work, tmp_path / 'again.log', run_env)
  rc = again.wait()
  assert rc == 0, again.output()[-4000:]
  assert harness.resumed_step(again.output()) == kept[-1]
  assert harness.committed_steps(work / 'best') == [harness.TOTAL_STEPS]
  _assert_same_as_reference(work, reference, record)


@pytest.mark.slow
def test_truncated_final_checkpoint_is_rewritten(
  trained_copy, reference, chain_overrides, run_env, tmp_path, record
):
  """Truncating the last checkpoint of a finished run: the re-run warns, resumes from the one
  before, retrains the last steps and writes a good final checkpoint, bitwise equal."""
  step, victim = harness.corrupt_latest(trained_copy)
  assert step == harness.TOTAL_STEPS
  previous = harness.committed_steps(trained_copy / 'checkpoints')[-2]
  run = harness.train_run(chain_overrides, trained_copy, tmp_path / 'rerun.log', run_env)
  rc = run.wait()
  out = run.output()
  rewritten = harness.readable(trained_copy / 'checkpoints' / str(step))
  record(fault='truncated_final_checkpoint', file=victim.name, rewritten=rewritten)
  assert rc == 0, out[-4000:]
  assert f'checkpoints/{step} is unreadable' in out and 'trying the previous one' in out
  assert harness.resumed_step(out) == previous
  assert rewritten
  _assert_same_as_reference(trained_copy, reference, record)


@pytest.mark.slow
def test_nan_update_stops_naming_the_step_or_is_skipped(data_dir, run_env, tmp_path, record):
  """NaN updates at step k (gradient/optimizer overflow): with on_nonfinite=error the CLI exits 2
  naming step k and every checkpoint before k is intact; with skip the update is dropped (the
  state of step k equals that of k-1 bitwise), the step is logged as kind 'nonfinite' and
  training goes on."""
  k = random.Random(SEED).randint(2, 4)
  base = {
    'data.data_dir': str(data_dir),
    'train.num_epochs': 1,
    'train.max_steps': k + 1,
    'checkpoint.every_steps': 1,
  }
  runs = {
    mode: harness.train_run(
      {**base, 'train.on_nonfinite': mode},
      tmp_path / mode,
      tmp_path / f'{mode}.log',
      run_env,
      driver_fault=f'nan_update:{k}',
    )
    for mode in ('error', 'skip')
  }
  rcs = {mode: run.wait() for mode, run in runs.items()}

  # error: exit 2, the message names the step, the checkpoints before it are intact.
  out = runs['error'].output()
  problems = harness.clear_failure(
    rcs['error'],
    out,
    2,
    f'Non-finite loss or gradients at step {k}',
    'The last checkpoint is intact',
  )
  kept = harness.committed_steps(tmp_path / 'error' / 'checkpoints')
  record(
    fault='nan_update_error',
    bad_input='NaN updates (on_nonfinite=error)',
    clear=not problems,
    problems=problems,
    data_lost=int(not kept or kept[-1] != k - 1),
  )
  assert not problems, problems
  assert kept[-1] == k - 1
  assert all(harness.readable(tmp_path / 'error' / 'checkpoints' / str(s)) for s in kept)
  params = th.final_params(tmp_path / 'error')
  assert all(np.all(np.isfinite(v)) for n, v in params.items() if n.startswith('params'))

  # skip: exit 0, one 'nonfinite' row at step k, the update of step k dropped.
  work = tmp_path / 'skip'
  assert rcs['skip'] == 0, runs['skip'].output()[-4000:]
  assert f'at step {k}' in runs['skip'].output() and 'Skipping it' in runs['skip'].output()
  nonfinite = [r['step'] for r in harness.rows(work, 'nonfinite')]
  from jaxcxr.training import checkpoint  # pylint: disable=g-import-not-at-top

  states = {
    s: checkpoint.read_state_numpy(str(work / 'checkpoints' / str(s))) for s in (k - 1, k, k + 1)
  }
  flat = {s: np.concatenate([np.ravel(x) for x in _leaves(states[s]['params'])]) for s in states}
  record(
    fault='nan_update_skip',
    skipped_steps=nonfinite,
    update_dropped=bool(np.array_equal(flat[k], flat[k - 1])),
  )
  assert nonfinite == [k]
  assert int(states[k]['step']) == k
  np.testing.assert_array_equal(flat[k], flat[k - 1])
  for a, b in zip(
    _leaves(states[k]['opt_state']), _leaves(states[k - 1]['opt_state']), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(flat[k + 1], flat[k])  # training went on


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return [np.asarray(x) for x in jax.tree.leaves(tree)]
