r"""Predicts image files (or a prepared split) with a trained workdir and writes a CSV.

  python -m launch.predict --workdir workdirs/default --images /data/new_xrays \
      --out predictions.csv [--leaderboard_labels]
  python -m launch.predict --workdir workdirs/default --split test --out test_predictions.csv
  python -m launch.predict --workdir workdirs/default --images /data/dicom_export --out p.csv

Columns: file, predicted_label, one probability column per class (prob_<class>), then
leaderboard_label (with --leaderboard_labels), true_label (with --split), and whether the image is
like the training films: ood_score (higher = less like them; empty until
`python -m launch.fit_ood --workdir W` has fitted the score, which `launch.train` does at the end
of a run), in_distribution (true / false) and ood_reason (empty, or the failed input checks
colour / near_constant / aspect_ratio / too_small, and `features` when the score is above its
threshold; docs/OOD.md). Labels are unchanged unless --reject_ood: then a row with
in_distribution=false gets the label OUT_OF_DISTRIBUTION (predicted_label and leaderboard_label;
the probabilities stay). Rows follow the input order (files sorted by path for a folder).
Unreadable files are skipped, listed on stderr and counted; the exit status is 1 when any file
failed (out-of-distribution images are not failures). Films: PNG / JPEG / BMP / TIFF and DICOM, a
DICOM recognised by content with or without `.dcm` (archive exports named by UID, nested study /
series / instance folders: folders are searched recursively); DICOM header facts add their own
ood_reason (header_modality, header_body_part, header_view, header_frames, header_colour,
header_for_processing; docs/WORKFLOW.md 7b). No header value is written anywhere: files are named
by the path given.
"""

import sys

from absl import app, flags

from jaxcxr.evaluation import inference
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_IMAGES = flags.DEFINE_multi_string(
  'images',
  [],
  'Film folder (recursive: nested DICOM study folders too), glob or file; PNG/JPEG/BMP/TIFF or '
  'DICOM (by content, any name); repeatable.',
)
_SPLIT = flags.DEFINE_string('split', '', 'Predict a prepared split instead of --images.')
_OUT = flags.DEFINE_string('out', 'predictions.csv', 'Output CSV.')
_LEADERBOARD = flags.DEFINE_bool(
  'leaderboard_labels', False, 'Add the leaderboard label column (COVID / NORMAL / PNEUMONIA).'
)
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to use.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Batch size; 0 = config.eval.batch_size.')
_REJECT = flags.DEFINE_bool(
  'reject_ood',
  False,
  'Label rows with in_distribution=false OUT_OF_DISTRIBUTION (predicted '
  'and leaderboard label) instead of a class.',
)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = inference.predict_workdir(
      _WORKDIR.value,
      _OUT.value,
      images=_IMAGES.value,
      split=_SPLIT.value,
      leaderboard_labels=_LEADERBOARD.value,
      which=_WHICH.value,
      batch_size=_BATCH.value,
      reject_ood=_REJECT.value,
    )
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  except (
    OSError
  ) as e:  # e.g. --out on a read-only disk or under a file: same status as launch.train
    cli.fail(e, errors.EXIT_IO_ERROR)
  if result['ood_warning']:
    print(f'warning: {result["ood_warning"]}', file=sys.stderr)
  for path, reason in result['failed']:
    print(f'failed: {path}: {reason}', file=sys.stderr)
  print(
    f'{result["rows"]} predictions written to {result["out"]}; {len(result["failed"])} failed.',
    file=sys.stderr,
  )
  rejected = '; labelled OUT_OF_DISTRIBUTION' if _REJECT.value else ''
  print(
    f'{result["ood_flagged"]} of {result["rows"]} images out of distribution '
    f'(in_distribution=false{rejected}).',
    file=sys.stderr,
  )
  if result['failed']:
    sys.exit(errors.EXIT_FAILED)


if __name__ == '__main__':
  cli.run(main)
