"""The fine-tuning path: converted torchvision weights -> train state -> frozen-backbone training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models
from jaxcxr.models import weights
from jaxcxr.training import loop
from jaxcxr.training import state as state_lib
from tests import train_helpers as th


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Phantom data prepared once for the module."""
  from jaxcxr import data  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp('tfds')
  data.prepare(th.tiny_config(d)[0].data)
  return d


def _random_converted(out, arch: str, seed: int = 0):
  """A converted-weights directory of `arch` with random values (ImageNet layout, 1000 classes)."""
  abstract = jax.eval_shape(models.build(arch, 1000).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)
  variables = {c: jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract[c])
               for c in weights.COLLECTIONS if c in abstract}
  variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])   # variances > 0
  weights.save_converted(out, arch, variables)
  return variables


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def test_converted_weights_are_inputs_of_the_init_not_constants(data_dir, tmp_path, monkeypatch):
  """make_run reads no weights (its abstract state needs none); the init reads them once, takes
  them as arguments (no constants in the traced program) and places the backbone exactly."""
  converted = _random_converted(tmp_path / 'weights', 'resnet18')
  config, _ = th.tiny_config(data_dir, **{'model.name': 'resnet18',
                                          'model.pretrained': str(tmp_path / 'weights')})
  reads = []
  real = weights.load_converted
  monkeypatch.setattr(weights, 'load_converted', lambda d: reads.append(d) or real(d))

  run = loop.make_run(config, str(tmp_path / 'work'))
  assert reads == []   # resuming never reads the converted weights
  pretrained = state_lib.read_pretrained(config)
  assert 'fc' not in pretrained['params']   # the 1000-class head is not even placed
  consts = jax.make_jaxpr(run.init_state)(jax.random.key(0), pretrained).consts
  weight_bytes = sum(a.nbytes for a in jax.tree.leaves(pretrained))
  assert sum(np.asarray(c).nbytes for c in consts) < 1e-3 * weight_bytes

  reads.clear()
  state = loop.fresh_state(run, jax.random.key(0))
  assert len(reads) == 1
  got = _flat({'params': state.params, 'batch_stats': state.batch_stats})
  want = _flat({c: {k: v for k, v in converted[c].items() if k != 'fc'} for c in converted})
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert got["['params']['fc']['kernel']"].shape == (512, 3)   # fresh 3-class head
