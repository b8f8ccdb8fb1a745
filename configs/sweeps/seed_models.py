r"""The seed comparison: VGG19, ResNet101, DenseNet201 and the scratch CNN, with and without
oversampling (8 trials). Each trial trains its model's own config (configs/<model>.py).

  python -m launch.sweep --config configs/sweeps/seed_models.py --workdir workdirs/seed_models \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  python -m launch.compare --workdir workdirs/seed_models

Needs the converted ImageNet weights of the three torchvision models (docs/WORKFLOW.md). Reference
(not a claim): Chowdhury et al. 2020 report 97.9% 3-class accuracy for DenseNet201 with
augmentation; the comparison plot draws that line.

`runlocal` runs all 8 trials on a 2-core CPU: every model's `runlocal` config (phantom data,
32 px, random init, one epoch capped at 3 steps) with its small stand-in model (cnn_small for VGG19,
cnn_bn for ResNet101/DenseNet201; see configs/densenet201.py for why). About a minute per trial on
a loaded 2-core CPU. The numbers of such a run are noise-level by design (3 steps on 48 synthetic
images); it checks the sweep/compare machinery, not the models.

  python -m launch.sweep --config configs/sweeps/seed_models.py:runlocal --workdir /tmp/seed
  python -m launch.compare --workdir /tmp/seed
"""

from configs import base

MODELS = ('vgg19', 'resnet101', 'densenet201', 'scratch_cnn')


def _file(model: str, arg: str) -> str:
  base.parse_arg(arg, 'configs/sweeps/seed_models.py')  # the args every model config takes
  return f'configs/{model}.py' + (f':{arg}' if arg else '')


def get_config(arg: str = '') -> str:
  """The base experiment: DenseNet201 (each trial names its own model config below)."""
  return _file('densenet201', arg)


def get_hyper(hyper, arg: str = ''):
  return hyper.product(
    [
      hyper.sweep('config', [_file(m, arg) for m in MODELS]),
      hyper.sweep('data.sampling', ['oversample', 'none']),
    ]
  )
