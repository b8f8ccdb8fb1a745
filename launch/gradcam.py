r"""Grad-CAM / Grad-CAM++ overlays for image files or a prepared split.

  python -m launch.gradcam --workdir workdirs/default --images a.png b.png --out cams/
  python -m launch.gradcam --workdir workdirs/default --split test --out cams/ --method gradcam++

--images: one <name>_<method>.png overlay per file (the explained class is the prediction, or
--target), plus cams.csv (file, predicted, target, probability). --split: a per-class grid of
correct and wrong predictions (grid_<split>.png) and, for phantom data (which has lesion masks),
the pointing-game hit rate and the share of the maps' mass on the lesions. The map's layer and size
are printed ('auto': the deepest stage of at least 7x7 at the model's input size; --layer last is
the last stage, as before issue #30).
"""

import os
import sys

from absl import flags

from jaxcxr.evaluation import gradcam
from jaxcxr.training import errors
from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
_IMAGES = flags.DEFINE_multi_string(
  'images',
  [],
  'Image files (PNG/JPEG/... or DICOM), folders (recursive) or globs (repeatable; extra '
  'positional arguments are taken as images too).',
)
_SPLIT = flags.DEFINE_string('split', '', 'Explain a prepared split instead of --images.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_METHOD = flags.DEFINE_enum('method', 'gradcam', ['gradcam', 'gradcam++'], 'Saliency method.')
_TARGET = flags.DEFINE_string(
  'target', '', 'Class to explain (name or index); default: the predicted class of each image.'
)
_ALPHA = flags.DEFINE_float('alpha', 0.4, 'Heat-map opacity.')
_PER_CLASS = flags.DEFINE_integer('per_class', 3, '--split: correct and wrong examples per class.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Checkpoint to use.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Grad-CAM batch size.')
_LAYER = flags.DEFINE_string(
  'layer',
  'auto',
  "Grad-CAM feature map: 'auto' (the deepest of at least 7x7), 'last', a stage (e.g. layer3) "
  "or several joined by '+'.",
)
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  images = list(_IMAGES.value) + list(argv[1:])
  try:
    result = gradcam.explain_workdir(
      _WORKDIR.value,
      _OUT.value,
      images=images,
      split=_SPLIT.value,
      method=_METHOD.value,
      target=_TARGET.value,
      alpha=_ALPHA.value,
      per_class=_PER_CLASS.value,
      which=_WHICH.value,
      batch_size=_BATCH.value,
      layer=_LAYER.value,
    )
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  for path, reason in result['failed']:
    print(f'failed: {path}: {reason}', file=sys.stderr)
  print(f'Grad-CAM map: {result["cam_map"]}')
  if 'pointing_game' in result:
    print(
      f'pointing game ({result["pointing_game_images"]} images with lesions): '
      f'{result["pointing_game"]:.3f}; energy inside the lesion masks: '
      f'{result["energy_in_mask"]:.3f}'
    )
  print(
    f'{len(result["written"])} overlay file(s) in {os.path.abspath(_OUT.value)}; '
    f'{len(result["failed"])} failed.',
    file=sys.stderr,
  )
  if result['failed']:
    sys.exit(errors.EXIT_FAILED)


if __name__ == '__main__':
  cli.run(main)
