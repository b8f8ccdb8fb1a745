r"""Fits a workdir's out-of-distribution score and measures it (docs/OOD.md).

  python -m launch.fit_ood --workdir workdirs/default
  python -m launch.fit_ood --workdir workdirs/cxr_cpu --in_dir ../shared/data/cxr_eval \
      [--ood_dir phantom_films=DIR] [--per_set 200] [--refit]

Fits the score on the run's training split and sets its threshold on the validation split
(`launch.train` does this at the end of every run; this command gives older runs the score, and
refits with --refit), saved as <workdir>/ood_model.npz for `launch.predict`. Then scores
in-distribution films (the run's test split, or every image under --in_dir) against the generated
out-of-distribution sets, transformed copies of the in-distribution films and any --ood_dir
folders, and writes <workdir>/eval_ood/ood_report.{md,json} (AUROC per set for the Mahalanobis
and the energy score, false alarms on the in-distribution films); the table is printed.
"""

from absl import app, flags

from jaxcxr.evaluation import ood, ood_eval
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to fit the score for.')
_REFIT = flags.DEFINE_bool(
  'refit', False, 'Fit again even when a score fitted on this checkpoint exists.'
)
_FALSE_ALARM = flags.DEFINE_float(
  'false_alarm',
  ood.DEFAULT_FALSE_ALARM,
  'Threshold rule (when fitting): the false-alarm rate to keep '
  'on films like the validation split ...',
)
_CONFIDENCE = flags.DEFINE_float(
  'confidence',
  ood.DEFAULT_CONFIDENCE,
  '... with this confidence (a tolerance bound on the validation '
  'scores); 0 = the plain (1 - false_alarm) quantile.',
)
_SPLIT = flags.DEFINE_enum(
  'split',
  'test',
  ['train', 'validation', 'test'],
  "In-distribution films: this split of the run's data (unless --in_dir).",
)
_IN_DIR = flags.DEFINE_string(
  'in_dir',
  '',
  'In-distribution films: every image (PNG/JPEG/... or DICOM by content) under this '
  'folder (recursive) instead of --split; only scored, nothing is '
  'tuned on it.',
)
_OOD_DIRS = flags.DEFINE_multi_string('ood_dir', [], 'A further OOD set, NAME=FOLDER; repeatable.')
_PER_SET = flags.DEFINE_integer(
  'per_set', 200, 'Pictures per generated set, and films per transformed set.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated material.')
_OUT = flags.DEFINE_string('out', '', 'Report folder; default <workdir>/eval_ood.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Batch size; 0 = config.eval.batch_size.')
flags.mark_flags_as_required(['workdir'])


def _ood_dirs() -> dict[str, str]:
  out = {}
  for spec in _OOD_DIRS.value:
    name, sep, folder = spec.partition('=')
    if not sep or not name or not folder:
      raise ValueError(
        f'--ood_dir={spec!r}: expected NAME=FOLDER, e.g. --ood_dir=phantom=/tmp/phantom_films.'
      )
    out[name] = folder
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _PER_SET.value < 1:
    cli.fail(ValueError(f'--per_set={_PER_SET.value} must be >= 1.'), errors.EXIT_USAGE)
  try:
    out = ood_eval.fit_and_evaluate(
      _WORKDIR.value,
      which=_WHICH.value,
      refit=_REFIT.value,
      false_alarm=_FALSE_ALARM.value,
      confidence=_CONFIDENCE.value,
      split=_SPLIT.value,
      in_dir=_IN_DIR.value,
      ood_dirs=_ood_dirs(),
      per_set=_PER_SET.value,
      seed=_SEED.value,
      out=_OUT.value,
      batch_size=_BATCH.value,
    )
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  except OSError as e:  # e.g. --out on a read-only disk
    cli.fail(e, errors.EXIT_IO_ERROR)
  print(ood_eval.markdown(out['result']))
  print(
    f'{"Fitted" if out["fitted"] else "Used the fitted"} score in '
    f'{_WORKDIR.value}/{ood.FILE}; report in {out["out_dir"]}.'
  )


if __name__ == '__main__':
  cli.run(main)
