"""The model of a config and its train state: build, initialise, load converted weights.

`build_model` is the one place a config becomes a Flax module; `create_train_state` makes a fresh
`TrainState` (random init, then converted ImageNet weights when `config.model.pretrained`).
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from jaxcxr import models
from jaxcxr.data import builder
from jaxcxr.models import weights


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  lr_scale: jax.Array = None   # host-driven plateau factor; multiplies every update
  ema_params: Any = None       # exponential moving average of params (config.train.ema_decay > 0)


def class_names_for(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Class names the model of `config` predicts (those of its dataset builder config)."""
  return builder.class_names_for(config.data.builder_config)


def build_model(config: ml_collections.ConfigDict) -> tuple[nn.Module, tuple[str, ...]]:
  """The Flax module of `config.model` and the class names it predicts."""
  names = class_names_for(config)
  overrides = {'dtype': jnp.dtype(config.model.dtype)}
  if config.model.dropout >= 0:
    overrides['dropout_rate'] = config.model.dropout
  if config.model.memory_efficient:
    overrides['memory_efficient'] = True
  return models.build(config.model.name, len(names), **overrides), names


def head_names(model_name: str) -> tuple[str, ...]:
  """Top-level parameter names of the classification head (fresh init, own learning rate)."""
  head = models.HEAD_PARAMS[model_name]
  return (head,) if isinstance(head, str) else tuple(head)


def _dummy_input(config) -> jax.Array:
  s = config.data.image_size
  return jnp.zeros((1, s, s, 3), jnp.float32)


def init_variables(module: nn.Module, config, key: jax.Array) -> dict:
  """Random {'params', 'batch_stats'} of `module` at the config's image size."""
  variables = module.init({'params': key, 'dropout': key}, _dummy_input(config), train=False)
  return {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}


def abstract_variables(module: nn.Module, config) -> dict:
  """Shapes and dtypes of `init_variables` (nothing computed)."""
  variables = jax.eval_shape(
      functools.partial(init_variables, module, config), jax.random.key(0))
  variables.setdefault('batch_stats', {})
  return variables


def create_train_state(config, module: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  """Fresh state: random init, then converted ImageNet weights when `config.model.pretrained`."""
  variables = init_variables(module, config, key)
  if config.model.pretrained:
    _, pretrained = weights.load_converted(os.path.expanduser(config.model.pretrained))
    variables = weights.load_pretrained(variables, pretrained,
                                        skip=head_names(config.model.name))
  ema = variables['params'] if config.train.get('ema_decay', 0.0) > 0 else None
  return TrainState.create(apply_fn=module.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}),
                           lr_scale=jnp.ones((), jnp.float32), ema_params=ema)
