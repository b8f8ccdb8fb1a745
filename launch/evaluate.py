r"""Evaluates a trained workdir on a split, or on any labelled folder, and writes the report.

  python -m launch.evaluate --workdir workdirs/default [--split test] [--which best] [--shortcut]
  python -m launch.evaluate --workdir workdirs/default --eval_dir /data/new_hospital [--out DIR]
  python -m launch.evaluate --workdir workdirs/default --labels_csv /data/public_set/labels.csv

With --split: the prepared split of the run's data config; report in <workdir>/eval_<split>/.
With --eval_dir: a Kaggle-layout folder (COVID/, Normal/, Viral Pneumonia/ [, Lung_Opacity/ for a
4-class model; names matched case-insensitively]) scored as it is, without preparing a dataset:
report in <workdir>/eval_folder_<folder name>/, with predictions.csv and unreadable.csv (files that
could not be read are listed and skipped). With --labels_csv (beside or instead of --eval_dir): a
CSV with a file column (file, path, filename, image, study, ...) and a label column (label, class,
...): each row's file, or every film of the study folder it names, with that class; paths relative
to --eval_dir, else to the CSV's folder. DICOM films are read like PNGs (docs/WORKFLOW.md 7b).
Either way: report.json, report.md, the figures (confusion matrix, ROC curves, reliability diagram,
training curves; --nofigures leaves them out) and, with the shortcut indicator, Grad-CAM example
panels in shortcut/ (the map's layer and size printed); the robustness
section (--norobustness drops it); with the run's out-of-distribution score fitted
(--ood, the default then), its section: how many of these films `launch.predict` would flag, and
the score's AUROC against generated pictures. The per-class table is printed.
"""

import os
import sys

from absl import app, flags

from jaxcxr.evaluation import folder_eval, report, robustness
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], 'Split to evaluate.')
_EVAL_DIR = flags.DEFINE_string(
  'eval_dir',
  '',
  'A labelled Kaggle-layout folder to score instead of a split (one subfolder '
  'per class: COVID/, Normal/, Viral Pneumonia/ [, Lung_Opacity/]); no dataset is prepared.',
)
_LABELS_CSV = flags.DEFINE_string(
  'labels_csv',
  '',
  'A CSV of file (or study folder) -> class to score, beside or instead of --eval_dir class '
  'folders; paths relative to --eval_dir, else to the CSV.',
)
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to evaluate.')
_OUT = flags.DEFINE_string(
  'out',
  '',
  'Report folder; default <workdir>/eval_<split> (with '
  '--eval_dir: <workdir>/eval_folder_<folder name>).',
)
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Batch size; 0 = config.eval.batch_size.')
_BOOTSTRAP = flags.DEFINE_integer(
  'bootstrap', -1, 'Bootstrap resamples for the CIs; -1 = config.eval.bootstrap.'
)
_SHORTCUT = flags.DEFINE_bool(
  'shortcut',
  None,
  'Add the Grad-CAM shortcut indicator and example panels to the '
  "report; default: on with --eval_dir, else the run's "
  'config.eval.shortcut.',
)
_OOD = flags.DEFINE_bool(
  'ood',
  None,
  "Add the out-of-distribution section (the workdir's fitted score; the "
  'split or folder as the in-distribution films). Default: when a score is '
  'fitted for the checkpoint.',
)
_ROBUSTNESS = flags.DEFINE_bool(
  'robustness',
  True,
  'Add the robustness section: macro-F1 and changed predictions when the films are zoomed, '
  'their border frame or corner text squares come from another film '
  '(jaxcxr.evaluation.robustness).',
)
_FIGURES = flags.DEFINE_bool(
  'figures',
  True,
  'Draw the PNG figures (confusion matrix, ROC curves, reliability diagram, training curves); '
  '--nofigures writes report.json and report.md only.',
)
flags.mark_flags_as_required(['workdir'])


def _evaluate() -> tuple[dict, str]:
  """(result, title) of the evaluation the flags ask for."""
  if _EVAL_DIR.value or _LABELS_CSV.value:
    if flags.FLAGS['split'].present:
      raise ValueError(
        'Give either --split (a prepared split) or --eval_dir / --labels_csv (films), not both.'
      )
    result = folder_eval.evaluate_folder(
      _WORKDIR.value,
      _EVAL_DIR.value,
      labels_csv=_LABELS_CSV.value,
      which=_WHICH.value,
      out=_OUT.value,
      batch_size=_BATCH.value,
      bootstrap=_BOOTSTRAP.value,
      shortcut=True if _SHORTCUT.value is None else _SHORTCUT.value,
      ood=_OOD.value is not False,
      robustness=_ROBUSTNESS.value,
      figures=_FIGURES.value,
    )
    return result, result['name']
  result = report.evaluate_workdir(
    _WORKDIR.value,
    _SPLIT.value,
    which=_WHICH.value,
    out=_OUT.value,
    batch_size=_BATCH.value,
    bootstrap=_BOOTSTRAP.value,
    shortcut=_SHORTCUT.value,
    ood=_OOD.value,
    robustness=_ROBUSTNESS.value,
    figures=_FIGURES.value,
  )
  return result, _SPLIT.value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result, title = _evaluate()
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  except (
    OSError
  ) as e:  # e.g. --out on a read-only disk or under a file: same status as launch.train
    cli.fail(e, errors.EXIT_IO_ERROR)
  m = result['metrics']
  print(report.summary_table(m))
  ci = m.get('ci95', {})
  line = f'{title}: n={m["num_examples"]} accuracy={m["accuracy"]:.4f}'
  if ci:
    line += f' [{ci["accuracy"][0]:.4f}, {ci["accuracy"][1]:.4f}]'
  line += f' macro_f1={m["macro"]["f1"]:.4f} macro_auc={m["macro"]["auc"]:.4f} '
  line += f'ece={m["calibration"]["ece"]:.4f}'
  print(line)
  for note in m['notes']:
    print(f'note: {note}')
  if result.get('shortcut'):
    ind = result['shortcut']['indicator']
    verdict = (
      f'flagged {", ".join(ind["flagged"])} (evidence outside the lungs; see the panels in '
      'shortcut/)'
      if ind['flagged']
      else ind.get('verdict', 'no class flagged')
    )
    cam_map = result['shortcut'].get('cam_map')
    print(f'shortcut indicator: {verdict}' + (f' (Grad-CAM map: {cam_map})' if cam_map else ''))
  if result.get('robustness'):
    print(robustness.summary_line(result['robustness']))
  unreadable = result.get('unreadable', [])
  for name, reason in unreadable[:20]:
    print(f'unreadable: {name}: {reason}', file=sys.stderr)
  if len(unreadable) > 20:
    print(f'... and {len(unreadable) - 20} more unreadable files (unreadable.csv)', file=sys.stderr)
  print(f'Report in {os.path.abspath(result["out_dir"])}', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
