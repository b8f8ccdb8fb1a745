"""Up-front validation of a training config: clear errors before any compile or data work."""

import os

import jax
import ml_collections

from jaxcxr import models
from jaxcxr.models import weights
from jaxcxr.training import optim

# The per-epoch validation metrics early stopping can follow (`validation.epoch_metrics`).
EPOCH_METRICS = ('val_loss', 'val_accuracy', 'val_macro_f1', 'val_macro_auc')

_CHOICES = {
    'data.source': ('phantom', 'folder'),
    'data.builder_config': ('3class', '4class'),
    'data.sampling': ('balanced', 'oversample', 'none', 'class_weighted_loss'),
    'data.on_bad_image': ('error', 'skip'),
    'model.dtype': ('float32', 'bfloat16'),
    'optim.name': optim.OPTIMIZERS,
    'optim.schedule': optim.SCHEDULES,
    'train.param_sharding': ('replicated', 'fsdp'),
    'train.on_nonfinite': ('error', 'skip'),
    'early_stopping.mode': ('max', 'min'),
    'early_stopping.metric': EPOCH_METRICS,
}


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None,
                    num_processes: int | None = None) -> None:
  """Raises ValueError naming the offending key, its value and the fix."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  errors = []
  for key, choices in _CHOICES.items():
    value = _get(config, key)
    if value not in choices:
      errors.append(f'config.{key}={value!r}: expected one of {list(choices)}.')
  if config.model.name not in models.NAMES:
    errors.append(f'config.model.name={config.model.name!r}: unknown; known models: '
                  f'{", ".join(models.NAMES)}.')
  for key in ('train.batch_size', 'eval.batch_size'):
    b = _get(config, key)
    if b <= 0 or b % num_devices or b % num_processes:
      errors.append(
          f'config.{key}={b} must be a positive multiple of the device count ({num_devices}) and '
          f'of the process count ({num_processes}); e.g. --config.{key}='
          f'{max(num_devices, num_processes) * max(1, round(max(b, 1) / num_devices))}.')
  if config.train.num_epochs < 1:
    errors.append(f'config.train.num_epochs={config.train.num_epochs}: must be >= 1.')
  if config.data.image_size < 16:
    errors.append(f'config.data.image_size={config.data.image_size}: must be >= 16 pixels.')
  fractions = (config.data.val_fraction, config.data.test_fraction)
  if min(fractions) <= 0 or sum(fractions) >= 1:
    errors.append(f'config.data.val_fraction={fractions[0]} and test_fraction={fractions[1]}: '
                  'each must be > 0 and together < 1.')
  if config.optim.learning_rate <= 0:
    errors.append(f'config.optim.learning_rate={config.optim.learning_rate}: must be > 0.')
  if not 0 <= config.optim.backbone_lr_mult:
    errors.append(f'config.optim.backbone_lr_mult={config.optim.backbone_lr_mult}: must be >= 0 '
                  '(0 freezes the backbone).')
  if not 0 <= config.train.get('ema_decay', 0.0) < 1:
    errors.append(f'config.train.ema_decay={config.train.ema_decay}: must be in [0, 1) (0 = off).')
  if not 0 <= config.train.label_smoothing < 1:
    errors.append(f'config.train.label_smoothing={config.train.label_smoothing}: must be in [0, 1).')
  if config.early_stopping.patience < 1:
    errors.append(f'config.early_stopping.patience={config.early_stopping.patience}: must be >= 1.')
  if config.checkpoint.every_steps < 1:
    errors.append(f'config.checkpoint.every_steps={config.checkpoint.every_steps}: must be >= 1.')
  if config.model.pretrained and not os.path.isdir(os.path.expanduser(config.model.pretrained)):
    errors.append(
        f'config.model.pretrained={config.model.pretrained!r} does not exist. Convert torchvision '
        f'weights first: python -m launch.convert --arch {config.model.name} '
        f'--source <.pth/.safetensors/URL> --out {config.model.pretrained}')
  elif config.model.pretrained:
    _check_pretrained_arch(config, errors)
  if config.data.source == 'folder' and not config.data.manual_dir and not config.data.data_dir:
    errors.append('config.data.source=folder needs --config.data.manual_dir=PATH (a Kaggle-layout '
                  'folder) or --config.data.data_dir of an already prepared dataset.')
  if errors:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(errors))


def _check_pretrained_arch(config, errors: list[str]) -> None:
  """Converted weights of another architecture (or not converted at all) fail here, by name,
  instead of as a list of missing parameters after the data is prepared."""
  try:
    arch = weights.read_meta(os.path.expanduser(config.model.pretrained)).get('arch')
  except (weights.WeightsError, OSError, ValueError) as e:
    errors.append(f'config.model.pretrained={config.model.pretrained!r}: {e}')
    return
  if arch and arch != config.model.name:
    errors.append(
        f'config.model.pretrained={config.model.pretrained!r} holds {arch} weights, but '
        f'config.model.name={config.model.name!r}. Use --config.model.name={arch}, or convert '
        f'{config.model.name} weights: python -m launch.convert --arch {config.model.name} '
        '--source <.pth/.safetensors/URL> --out <dir>')
