"""configs/*.py and jaxcxr.training.config_checks: every config takes only its documented args, and
every key of configs/base.py has a bad value that `validate_config` refuses by name (or is listed
below with the reason it needs no check), so a new key cannot slip in unchecked."""

import importlib
import re

import pytest

from configs import base
from jaxcxr.training import config_checks

# File -> the args its docstring documents (each must build; anything else must be refused).
CONFIG_ARGS = {
  'default': ['', 'runlocal'],
  'cxr_cpu': ['', 'runlocal', 'pretrained'],
  'tiny': [''],
  'densenet201': ['', 'runlocal', 'bf16', 'runlocal,bf16'],
  'resnet101': ['', 'runlocal', 'bf16'],
  'vgg19': ['', 'runlocal', 'bf16'],
  'scratch_cnn': ['', 'runlocal', 'bf16'],
  'sweeps.seed_models': ['', 'runlocal'],
}

# A value each checked key must refuse (the message must name `config.<key>`).
BAD = {
  'seed': -1,
  'data.source': 'cloud',
  'data.builder_config': '5class',
  'data.image_size': 8,
  'data.stored_size': -1,
  'data.split_seed': -1,
  'data.val_fraction': -0.1,
  'data.lookalike_threshold': -2,
  'early_stopping.select': 'latest',
  'data.test_fraction': 0.9,
  'data.on_bad_image': 'ignore',
  'data.max_image_pixels': 0,
  'data.sampling': 'smote',
  'data.num_workers': -1,
  'data.prefetch': 0,
  'data.read_threads': 0,
  'data.augment.rotation_deg': -1.0,
  'data.augment.zoom': (1.1, 0.9),
  'data.augment.translate': -0.1,
  'data.augment.brightness': -0.1,
  'data.augment.contrast': 1.0,
  'data.phantom.num_per_class': 2,
  'data.phantom.image_size': 8,
  'data.phantom.seed': -1,
  'model.name': 'resnet9000',
  'model.pretrained': '/nonexistent/weights',
  'model.dtype': 'float16',
  'model.dropout': 1.0,
  'model.scan_chunk': 8,  # cnn_bn is not a DenseNet
  'train.batch_size': 0,
  'train.num_epochs': 0,
  'train.label_smoothing': 1.0,
  'train.ema_decay': 1.0,
  'train.mixup_alpha': -0.2,
  'train.cutmix_alpha': -1.0,
  'train.log_every_steps': 0,
  'train.param_sharding': 'tp',
  'train.on_nonfinite': 'ignore',
  'train.max_steps': 0,
  'optim.name': 'lamb',
  'optim.learning_rate': 0.0,
  'optim.weight_decay': -1e-4,
  'optim.b1': 1.0,
  'optim.b2': -0.1,
  'optim.momentum': 1.5,
  'optim.schedule': 'linear',
  'optim.warmup_epochs': -1.0,
  'optim.min_lr_ratio': 1.5,
  'optim.step_epochs': (60, 30),
  'optim.step_gamma': 0.0,
  'optim.plateau_factor': 0.0,
  'optim.plateau_patience': 0,
  'optim.grad_clip_norm': -1.0,
  'optim.backbone_lr_mult': -0.1,
  'early_stopping.metric': 'val_f2',
  'early_stopping.mode': 'up',
  'early_stopping.patience': 0,
  'early_stopping.min_delta': -0.1,
  'checkpoint.every_steps': 0,
  'checkpoint.max_to_keep': 0,
  'eval.batch_size': 0,
  'eval.bootstrap': -1,
  'eval.split': 'dev',
}

# Keys with no value-level check, and why.
UNCHECKED = {
  'data.manual_dir': 'any path; prepare names a missing or empty folder (it may be absent when '
  'the dataset is already prepared in data_dir)',
  'data.data_dir': 'any path; created on first use',
  'data.augment.enabled': 'bool: the locked config refuses other types',
  'data.augment.hflip': 'bool',
  'model.memory_efficient': 'bool',
  'model.cpu_ynn_fusion': 'bool',
  'optim.nesterov': 'bool',
  'checkpoint.async_save': 'bool',
  'eval.shortcut': 'bool',
  'eval.ood': 'bool',
  'eval.robustness': 'bool',
  'eval.figures': 'bool',
  'eval.tta': 'bool',
}


def _leaf_keys(node, prefix=''):
  for k, v in node.items():
    if hasattr(v, 'items'):
      yield from _leaf_keys(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


def _tiny(**overrides):
  c = importlib.import_module('configs.tiny').get_config()
  with c.unlocked():
    for key, value in overrides.items():
      node = c
      *path, last = key.split('.')
      for p in path:
        node = node[p]
      node[last] = value
  return c


def _validate(c):
  config_checks.validate_config(c, num_devices=1, num_processes=1)


def test_every_key_is_checked_or_listed():
  keys = set(_leaf_keys(base.get_base_config()))
  assert keys == set(BAD) | set(UNCHECKED), (
    f'new keys without a check: {sorted(keys - set(BAD) - set(UNCHECKED))}; '
    f'stale entries: {sorted((set(BAD) | set(UNCHECKED)) - keys)}'
  )


@pytest.mark.parametrize('key', sorted(BAD))
def test_bad_value_is_refused_naming_the_key(key):
  with pytest.raises(ValueError, match=re.escape(f'config.{key}=')):
    _validate(_tiny(**{key: BAD[key]}))


def test_bool_keys_refuse_other_types():
  for key in UNCHECKED:
    if UNCHECKED[key].startswith('bool'):
      with pytest.raises(TypeError):
        _tiny(**{key: 'yes'})


def test_every_error_is_reported_at_once():
  with pytest.raises(ValueError, match='Invalid config:') as e:
    _validate(_tiny(**{'train.log_every_steps': 0, 'eval.split': 'dev', 'data.prefetch': 0}))
  msg = str(e.value)
  assert msg.startswith('Invalid config:')
  for key in ('train.log_every_steps', 'eval.split', 'data.prefetch'):
    assert f'config.{key}=' in msg


@pytest.mark.parametrize('name', sorted(CONFIG_ARGS))
def test_documented_args_build_and_validate(name):
  module = importlib.import_module(f'configs.{name}')
  for arg in CONFIG_ARGS[name]:
    c = module.get_config(arg)
    if isinstance(c, str):  # a sweep's base: the config file each trial starts from
      assert c.startswith('configs/') and c.endswith(f':{arg}' if arg else '.py')
      continue
    assert c.is_locked
    with c.unlocked():
      c.model.pretrained = ''  # the converted weights are not on this machine
      if c.data.source == 'folder':
        c.data.manual_dir = '/data/COVID-19_Radiography_Dataset'
    _validate(c)


@pytest.mark.parametrize('name', sorted(CONFIG_ARGS))
def test_unknown_arg_is_refused_naming_the_file(name):
  module = importlib.import_module(f'configs.{name}')
  path = f'configs/{name.replace(".", "/")}.py'
  with pytest.raises(ValueError, match=re.escape(f"{path}: unknown arg(s) ['bogus']")):
    module.get_config('bogus')
  with pytest.raises(ValueError, match='unknown arg'):
    module.get_config(','.join(CONFIG_ARGS[name][-1:] + ['runlocl']))
