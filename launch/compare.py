r"""Compares the training runs under a directory (a sweep, or any tree of workdirs).

  python -m launch.compare --workdir workdirs/seed_models

Reads every results.json (and config.json of unfinished runs) under --workdir, recursively, and
writes --workdir/results.csv, results.md (markdown table sorted by macro F1, with the
hyperparameters that differ between runs) and comparison.png (accuracy and macro F1 per run, with
the paper's 97.9% 3-class accuracy as a reference line). Prints the markdown table.
"""

import sys

from absl import app, flags

from jaxcxr.tools import compare
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory holding the runs (searched recursively).'
)
_PLOT = flags.DEFINE_bool('plot', True, 'Also write comparison.png.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    out = compare.compare(_WORKDIR.value, with_plot=_PLOT.value)
  except FileNotFoundError as e:
    cli.fail(e, errors.EXIT_USAGE)
  print(out['markdown'])
  print('Wrote ' + ', '.join(out[k] for k in ('csv', 'md', 'png') if k in out), file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
