r"""Runs a sweep (configs/sweeps/<name>.py) trial after trial, each as its own training command.

  python -m launch.sweep --config configs/sweeps/seed_models.py:runlocal --workdir /tmp/seed \
      --dry_run
  python -m launch.sweep --config configs/sweeps/seed_models.py:runlocal --workdir /tmp/seed
  python -m launch.sweep --config configs/sweeps/seed_models.py --workdir workdirs/seed_models \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  python -m launch.compare --workdir /tmp/seed

Each trial runs `python -m launch.train --config FILE[:arg] --workdir DIR/<NNN-key=value,...>
[--config.k=v ...]` (printed before it starts; copy it to reproduce one trial). `--config.k=v`
flags given here (the `=` form) are passed to every trial. Re-running the same sweep skips finished
trials (results.json present) and resumes interrupted ones. A failed trial is reported and the
sweep continues; the exit status is 1 if any trial failed, 75 if one was preempted (re-run to
resume). Status: DIR/sweep.json; per-trial output: DIR/logs/<trial>.log.
"""

import sys

from absl import app, flags

from jaxcxr.tools import sweep
from jaxcxr.training import errors
from launch import cli

_CONFIG = flags.DEFINE_string(
  'config', None, 'Sweep file[:arg], e.g. configs/sweeps/x.py:runlocal.'
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory; one sub-workdir per trial.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, "Print each trial's command and run nothing.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  overrides = argv[1:]
  bad = [a for a in overrides if not (a.startswith('--config.') and '=' in a)]
  if bad:
    raise app.UsageError(f'Unexpected arguments: {bad} (config overrides use --config.k=v).')
  try:
    base, hypers = sweep.load_trials(_CONFIG.value)
    sweep.check_overrides(base, hypers)
    trials = sweep.make_trials(base, hypers, _WORKDIR.value, overrides)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  if _DRY_RUN.value:
    for t in trials:
      print(f'# {t.name} [{sweep.trial_status(t.workdir)}]\n{sweep.shell_join(t.command)}')
    return
  results = sweep.run_trials(trials, _WORKDIR.value)
  print(sweep.summary_table(trials, results))
  if 'interrupted' in results.values():
    sys.exit(errors.EXIT_PREEMPTED)
  if 'failed' in results.values():
    failed = [t.name for t in trials if results.get(t.index) == 'failed']
    print(
      f'{len(failed)} trial(s) failed: {", ".join(failed)} (logs in {_WORKDIR.value}/logs/)',
      file=sys.stderr,
    )
    sys.exit(errors.EXIT_FAILED)


def parse_flags(argv):
  """absl parses everything but `--config.k=v`, which main receives as every trial's overrides."""
  absl_argv, overrides = sweep.split_config_flags(argv)
  return flags.FLAGS(absl_argv) + overrides


if __name__ == '__main__':
  cli.run(main, flags_parser=parse_flags)
