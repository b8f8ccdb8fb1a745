r"""Grad-CAM resolution A/B on phantom-trained workdirs: localisation and the shortcut indicator.

  python -m launch.benchmark_cam --workdir workdirs/phantom_default --workdir workdirs/marked \
      [--layers last,auto,auto+last] [--split test] [--lesion_dir DIR] [--out cam_layers.json]
  python -m launch.benchmark_cam --workdir workdirs/cxr_cpu --eval_dir ../shared/data/cxr_eval

Per workdir and Grad-CAM layer: the map size, the pointing game and the energy inside the lesion
mask (true-class maps of the films with a lesion), and the shortcut indicator's figures
(`jaxcxr.benchmarks.cam_layers`). The workdirs must be trained on phantom films (lesion masks);
with --eval_dir, any workdir: the indicator per layer on that folder's films.
"""

import json

from absl import flags

from jaxcxr.benchmarks import cam_layers
from jaxcxr.training import errors
from launch import cli

_WORKDIRS = flags.DEFINE_multi_string('workdir', None, 'Phantom-trained workdir (repeatable).')
_LAYERS = flags.DEFINE_list('layers', ['last', 'auto', 'auto+last'], 'Grad-CAM layer choices.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split scored.')
_LESION_DIR = flags.DEFINE_string(
  'lesion_dir', '', 'Phantom folder with lesion_masks/ (default: the workdir data folder).'
)
_EVAL_DIR = flags.DEFINE_string(
  'eval_dir', '', 'A labelled folder of real films instead: the indicator per layer only.'
)
_OUT = flags.DEFINE_string('out', '', 'Optional JSON of every figure.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  results = []
  try:
    for workdir in _WORKDIRS.value:
      if _EVAL_DIR.value:
        results.append(
          cam_layers.measure_folder(workdir, _EVAL_DIR.value, layers=tuple(_LAYERS.value))
        )
        continue
      results.append(
        cam_layers.measure_workdir(
          workdir, _LESION_DIR.value, layers=tuple(_LAYERS.value), split=_SPLIT.value
        )
      )
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  print(cam_layers.table(results))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(results, f, indent=1, default=float)


if __name__ == '__main__':
  cli.run(main)
