"""The model of a config and its train state: build, initialise, load converted weights.

`build_model` is the one place a config becomes a Flax module (and `compute_dtype` the one place
`config.model.dtype` is resolved); `create_train_state` makes a fresh `TrainState` (random init,
with the backbone taken from converted ImageNet weights when given). The converted weights are read
on the host by `read_pretrained` and passed to the jitted init as *arguments* already placed on the
devices, never closed over: closed-over arrays would become constants of the compiled program.
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
  lr_scale: jax.Array = None  # host-driven plateau factor; multiplies every update
  ema_params: Any = None  # exponential moving average of params (config.train.ema_decay > 0)


def class_names_for(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Class names the model of `config` predicts (those of its dataset builder config)."""
  return builder.class_names_for(config.data.builder_config)


# Backends whose matrix units run bfloat16 at (at least) twice the float32 rate.
_BF16_BACKENDS = ('gpu', 'cuda', 'rocm', 'tpu')


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The compute dtype of `config.model.dtype` on this backend (params always stay float32).

  'auto' is bfloat16 on GPU and TPU (tensor cores / MXU) and float32 on CPU, where bfloat16 is
  emulated and slower; 'float32' and 'bfloat16' are taken as given.
  """
  if config.model.dtype == 'auto':
    return jnp.dtype(jnp.bfloat16 if jax.default_backend() in _BF16_BACKENDS else jnp.float32)
  return jnp.dtype(config.model.dtype)


def build_model(config: ml_collections.ConfigDict) -> tuple[nn.Module, tuple[str, ...]]:
  """The Flax module of `config.model` and the class names it predicts."""
  names = class_names_for(config)
  overrides = {'dtype': compute_dtype(config)}
  if config.model.dropout >= 0:
    overrides['dropout_rate'] = config.model.dropout
  if config.model.memory_efficient:
    overrides['memory_efficient'] = True
  if config.model.scan_chunk:
    overrides['scan_chunk'] = config.model.scan_chunk
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
  variables = jax.eval_shape(functools.partial(init_variables, module, config), jax.random.key(0))
  variables.setdefault('batch_stats', {})
  return variables


def read_pretrained(config) -> dict | None:
  """The backbone of `config.model.pretrained` as numpy arrays, or None when it is ''.

  Returns:
    {'params': ..., 'batch_stats': ...} without the head (the model's head is re-sized and keeps
    its fresh init), ready for `jax.device_put` and `create_train_state(..., pretrained=...)`.
  """
  if not config.model.pretrained:
    return None
  _, variables = weights.load_converted(os.path.expanduser(config.model.pretrained))
  heads = head_names(config.model.name)
  return {c: {k: v for k, v in tree.items() if k not in heads} for c, tree in variables.items()}


def create_train_state(
  config,
  module: nn.Module,
  tx: optax.GradientTransformation,
  key: jax.Array,
  pretrained: dict | None = None,
) -> TrainState:
  """Fresh state: random init, with every backbone variable taken from `pretrained` when given.

  Args:
    config: the experiment config (image size, model name).
    module: from `build_model(config)`.
    tx: the optimizer.
    key: PRNG key of the random init (the head's, and everything when `pretrained` is None).
    pretrained: `read_pretrained(config)`, as arrays (on the devices) or abstract values. Jit this
      function with `pretrained` as an argument: XLA then drops the unused random init of the
      backbone, and the weights stay inputs instead of constants baked into the program.

  Raises:
    jaxcxr.models.weights.WeightsError: `pretrained` does not fit the model (names path, shapes).
  """
  variables = init_variables(module, config, key)
  if pretrained is not None:
    variables = weights.load_pretrained(variables, pretrained, skip=head_names(config.model.name))
  ema = variables['params'] if config.train.get('ema_decay', 0.0) > 0 else None
  return TrainState.create(
    apply_fn=module.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=variables.get('batch_stats', {}),
    lr_scale=jnp.ones((), jnp.float32),
    ema_params=ema,
  )
