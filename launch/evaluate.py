r"""Evaluates a trained workdir on a split and writes the report.

  python -m launch.evaluate --workdir workdirs/default [--split test] [--which best] [--shortcut]

Writes report.json, report.md and the figures (confusion matrix, ROC curves, reliability diagram,
training curves) into <workdir>/eval_<split>/ (or --out) and prints the per-class table.
"""

import os
import sys

from absl import app
from absl import flags

from jaxcxr.evaluation import report
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], 'Split to evaluate.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to evaluate.')
_OUT = flags.DEFINE_string('out', '', 'Report folder; default <workdir>/eval_<split>.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Batch size; 0 = config.eval.batch_size.')
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', -1,
                                  'Bootstrap resamples for the CIs; -1 = config.eval.bootstrap.')
_SHORTCUT = flags.DEFINE_bool('shortcut', None,
                              'Add the Grad-CAM shortcut indicator and example panels to the '
                              'report; default: the run\'s config.eval.shortcut.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = report.evaluate_workdir(_WORKDIR.value, _SPLIT.value, which=_WHICH.value,
                                       out=_OUT.value, batch_size=_BATCH.value,
                                       bootstrap=_BOOTSTRAP.value, shortcut=_SHORTCUT.value)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  except OSError as e:   # e.g. --out on a read-only disk or under a file: same status as launch.train
    cli.fail(e, errors.EXIT_IO_ERROR)
  m = result['metrics']
  print(report.summary_table(m))
  ci = m.get('ci95', {})
  line = f'{_SPLIT.value}: n={m["num_examples"]} accuracy={m["accuracy"]:.4f}'
  if ci:
    line += f' [{ci["accuracy"][0]:.4f}, {ci["accuracy"][1]:.4f}]'
  line += f' macro_f1={m["macro"]["f1"]:.4f} macro_auc={m["macro"]["auc"]:.4f} '
  line += f'ece={m["calibration"]["ece"]:.4f}'
  print(line)
  for note in m['notes']:
    print(f'note: {note}')
  print(f'Report in {os.path.abspath(result["out_dir"])}', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
