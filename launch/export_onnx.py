r"""Exports a trained workdir for the AI Model Share COVID-19 leaderboard.

  pip install -r requirements-export.txt && pip install --no-deps jax2onnx==0.17.1
  python -m launch.export_onnx --workdir workdirs/default --out export/ [--layout NHWC]

Writes model.onnx (preprocessed float32 images -> softmax probabilities, dynamic batch),
preprocessing.json and preprocessor.py (standalone numpy + Pillow `preprocessor(path)`), checks
onnxruntime against JAX on random inputs and prints the largest difference.
"""

import sys

from absl import app, flags

from jaxcxr.evaluation import export
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_LAYOUT = flags.DEFINE_enum('layout', 'NHWC', ['NHWC', 'NCHW'], 'ONNX input layout.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to export.')
_ATOL = flags.DEFINE_float('atol', 1e-4, 'Largest allowed |ONNX - JAX| probability difference.')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = export.export_workdir(
      _WORKDIR.value, _OUT.value, layout=_LAYOUT.value, which=_WHICH.value, atol=_ATOL.value
    )
  except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  print(
    f'ONNX parity: max |onnxruntime - JAX| = {result["max_abs_diff"]:.3g} '
    f'(probabilities, {result["layout"]} input)'
  )
  for key in ('path', 'preprocessing', 'preprocessor'):
    print(f'wrote {result[key]}')
  if result['unmapped_classes']:
    print(
      f'warning: classes {result["unmapped_classes"]} have no leaderboard label; this model '
      'cannot be scored by the 3-label leaderboard.',
      file=sys.stderr,
    )


if __name__ == '__main__':
  cli.run(main)
