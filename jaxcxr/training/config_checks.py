"""Up-front validation of a training config: clear errors before any data, compile or training work.

Every key of configs/base.py that can be judged from the config alone is checked here, so a bad
value fails in seconds with all its siblings, instead of after data preparation (data.*), after
compilation, at the first log step (train.log_every_steps), or after the whole run
(eval.split). What is left to later code needs the data or the disk: an empty split, a missing
class folder, an unreadable image.
"""

import os

import jax
import ml_collections

from jaxcxr import models
from jaxcxr.data import augment, builder, sampling
from jaxcxr.models import weights
from jaxcxr.training import early_stopping, optim

# The per-epoch validation metrics early stopping can follow (`validation.epoch_metrics`).
EPOCH_METRICS = ('val_loss', 'val_accuracy', 'val_macro_f1', 'val_macro_auc')

_CHOICES = {
  'data.source': tuple(builder.BUILDERS),
  'data.builder_config': builder.CONFIG_NAMES,
  'data.sampling': sampling.SAMPLING_MODES,
  'data.on_bad_image': ('error', 'skip'),
  'model.dtype': ('auto', 'float32', 'bfloat16'),
  'optim.name': optim.OPTIMIZERS,
  'optim.schedule': optim.SCHEDULES,
  'train.param_sharding': ('replicated', 'fsdp'),
  'train.on_nonfinite': ('error', 'skip'),
  'early_stopping.mode': ('max', 'min'),
  'early_stopping.metric': EPOCH_METRICS,
  'early_stopping.select': early_stopping.SELECT,
  'eval.split': sampling.SPLITS,
}

# key -> (lowest allowed value, what it means); integers and floats alike.
_AT_LEAST = {
  'seed': (0, 'numpy seeds are non-negative'),
  'data.image_size': (16, 'pixels'),
  'data.stored_size': (0, '0 = image_size'),
  'data.split_seed': (0, 'numpy seeds are non-negative'),
  'data.lookalike_threshold': (-1, '-1 splits film by film'),
  'data.max_image_pixels': (1, 'larger images are refused'),
  'data.num_workers': (0, '0 = in-process'),
  'data.prefetch': (1, 'batches buffered per worker'),
  'data.read_threads': (1, 'threads per loader process'),
  'data.phantom.num_per_class': (3, 'every split needs examples'),
  'data.phantom.image_size': (16, 'pixels'),
  'data.phantom.seed': (0, 'numpy seeds are non-negative'),
  'train.num_epochs': (1, ''),
  'train.log_every_steps': (1, 'steps between train rows'),
  'train.mixup_alpha': (0, '0 = off'),
  'train.cutmix_alpha': (0, '0 = off'),
  'optim.weight_decay': (0, ''),
  'optim.warmup_epochs': (0, ''),
  'optim.grad_clip_norm': (0, '0 = off'),
  'optim.backbone_lr_mult': (0, '0 freezes the backbone'),
  'optim.plateau_patience': (1, 'epochs'),
  'early_stopping.patience': (1, 'epochs'),
  'early_stopping.min_delta': (0, ''),
  'checkpoint.every_steps': (1, 'steps'),
  'checkpoint.max_to_keep': (1, 'checkpoints'),
  'eval.bootstrap': (0, '0 = no confidence intervals'),
}

# key -> (low, high, low inclusive, high inclusive).
_IN_RANGE = {
  'train.label_smoothing': (0.0, 1.0, True, False),
  'train.ema_decay': (0.0, 1.0, True, False),
  'optim.b1': (0.0, 1.0, True, False),
  'optim.b2': (0.0, 1.0, True, False),
  'optim.momentum': (0.0, 1.0, True, False),
  'optim.min_lr_ratio': (0.0, 1.0, True, True),
  'optim.step_gamma': (0.0, 1.0, False, True),
  'optim.plateau_factor': (0.0, 1.0, False, True),
}


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _interval(lo, hi, lo_in, hi_in) -> str:
  return f'{"[" if lo_in else "("}{lo}, {hi}{"]" if hi_in else ")"}'


def _generic_checks(config) -> list[str]:
  """Choices, lower bounds and ranges from the tables above."""
  errors = []
  for key, choices in _CHOICES.items():
    value = _get(config, key)
    if value not in choices:
      errors.append(f'config.{key}={value!r}: expected one of {list(choices)}.')
  for key, (low, why) in _AT_LEAST.items():
    value = _get(config, key)
    if value < low:
      errors.append(f'config.{key}={value}: must be >= {low}' + (f' ({why}).' if why else '.'))
  for key, (lo, hi, lo_in, hi_in) in _IN_RANGE.items():
    value = _get(config, key)
    if not ((lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)):
      errors.append(f'config.{key}={value}: must be in {_interval(lo, hi, lo_in, hi_in)}.')
  return errors


def _data_checks(d) -> list[str]:
  errors = []
  fractions = (d.val_fraction, d.test_fraction)
  if min(fractions) < 0 or sum(fractions) >= 1:
    errors.append(
      f'config.data.val_fraction={fractions[0]} and config.data.test_fraction='
      f'{fractions[1]}: each must be >= 0 and together < 1 (the rest is train; 0 '
      'trains on those films too: no validation / no final test evaluation).'
    )
  if d.source == 'folder' and not d.manual_dir and not d.data_dir:
    errors.append(
      'config.data.source=folder needs --config.data.manual_dir=PATH (a Kaggle-layout '
      'folder) or --config.data.data_dir of an already prepared dataset.'
    )
  try:
    augment.AugmentParams.from_config(d.augment)
  except ValueError as e:  # names the config.data.augment key
    errors.append(str(e))
  return errors


def _model_checks(config) -> list[str]:
  errors = []
  if config.model.name not in models.NAMES:
    errors.append(
      f'config.model.name={config.model.name!r}: unknown; known models: {", ".join(models.NAMES)}.'
    )
  if not (config.model.dropout == -1 or 0 <= config.model.dropout < 1):
    errors.append(
      f'config.model.dropout={config.model.dropout}: must be in [0, 1), or -1 for the '
      "architecture's default."
    )
  if config.model.scan_chunk < 0 or (
    config.model.scan_chunk
    and config.model.name in models.NAMES
    and models.family(config.model.name) != 'densenet'
  ):
    errors.append(
      f'config.model.scan_chunk={config.model.scan_chunk}: DenseNet only, >= 0 (dense '
      'layers per scanned chunk, e.g. 8; 0 keeps the block unrolled).'
    )
  if config.model.pretrained and not os.path.isdir(os.path.expanduser(config.model.pretrained)):
    errors.append(
      f'config.model.pretrained={config.model.pretrained!r} does not exist. Convert torchvision '
      f'weights first: python -m launch.convert --arch {config.model.name} '
      f'--source <.pth/.safetensors/URL> --out {config.model.pretrained}'
    )
  elif config.model.pretrained:
    _check_pretrained_arch(config, errors)
  return errors


def _schedule_checks(config) -> list[str]:
  errors = []
  if config.optim.learning_rate <= 0:
    errors.append(f'config.optim.learning_rate={config.optim.learning_rate}: must be > 0.')
  epochs = list(config.optim.step_epochs)
  if any(e <= 0 for e in epochs) or epochs != sorted(epochs):
    errors.append(
      f'config.optim.step_epochs={tuple(epochs)}: must be positive and increasing '
      '(epochs at which the step schedule multiplies the LR by step_gamma).'
    )
  if not (config.train.max_steps == -1 or config.train.max_steps >= 1):
    errors.append(
      f'config.train.max_steps={config.train.max_steps}: must be -1 (num_epochs * '
      'steps_per_epoch) or >= 1.'
    )
  es = config.early_stopping
  if (
    config.data.val_fraction == 0
    and es.select in early_stopping.SELECT
    and (
      early_stopping.selection_rule(es.select, config.optim.schedule) == 'best'
      or config.optim.schedule == 'plateau'
    )
  ):
    errors.append(
      f'config.data.val_fraction=0 (no validation split) with '
      f'config.early_stopping.select={es.select!r} and config.optim.schedule='
      f'{config.optim.schedule!r}: nothing to pick a best epoch or a plateau on. Use '
      "an annealing schedule (cosine, step) with select 'auto' or 'last', or keep a "
      'validation split.'
    )
  return errors


def _batch_checks(config, num_devices: int, num_processes: int) -> list[str]:
  errors = []
  for key in ('train.batch_size', 'eval.batch_size'):
    b = _get(config, key)
    if b <= 0 or b % num_devices or b % num_processes:
      errors.append(
        f'config.{key}={b} must be a positive multiple of the device count ({num_devices}) and '
        f'of the process count ({num_processes}); e.g. --config.{key}='
        f'{max(num_devices, num_processes) * max(1, round(max(b, 1) / num_devices))}.'
      )
  return errors


def validate_config(
  config: ml_collections.ConfigDict,
  num_devices: int | None = None,
  num_processes: int | None = None,
) -> None:
  """Raises one ValueError listing every offending key, its value and the fix."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  errors = (
    _generic_checks(config)
    + _data_checks(config.data)
    + _model_checks(config)
    + _schedule_checks(config)
    + _batch_checks(config, num_devices, num_processes)
  )
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
      '--source <.pth/.safetensors/URL> --out <dir>'
    )
