"""The fine-tuning path: converted torchvision weights -> train state -> frozen-backbone
training."""

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
  abstract = jax.eval_shape(
    models.build(arch, 1000).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )
  rng = np.random.default_rng(seed)
  variables = {
    c: jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract[c])
    for c in weights.COLLECTIONS
    if c in abstract
  }
  variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])  # variances > 0
  weights.save_converted(out, arch, variables)
  return variables


def _flat(tree) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  }


def test_converted_weights_are_inputs_of_the_init_not_constants(data_dir, tmp_path, monkeypatch):
  """make_run reads no weights (its abstract state needs none); the init reads them once, takes
  them as arguments (no constants in the traced program) and places the backbone exactly."""
  converted = _random_converted(tmp_path / 'weights', 'resnet18')
  config, _ = th.tiny_config(
    data_dir, **{'model.name': 'resnet18', 'model.pretrained': str(tmp_path / 'weights')}
  )
  reads = []
  real = weights.load_converted
  monkeypatch.setattr(weights, 'load_converted', lambda d: reads.append(d) or real(d))

  run = loop.make_run(config, str(tmp_path / 'work'))
  assert reads == []  # resuming never reads the converted weights
  pretrained = state_lib.read_pretrained(config)
  assert 'fc' not in pretrained['params']  # the 1000-class head is not even placed
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
  assert got["['params']['fc']['kernel']"].shape == (512, 3)  # fresh 3-class head


def _torchvision_pth(path, arch: str):
  """A torchvision `arch` with random weights and random BatchNorm running statistics, saved the
  way ImageNet checkpoints are (a state dict in a .pth). Returns the state dict as numpy."""
  import torch  # pylint: disable=g-import-not-at-top  (tests only; training never imports torch)
  import torchvision  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = getattr(torchvision.models, arch)(weights=None)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so loading them shows
      m.running_mean.normal_()
      m.running_var.uniform_(0.5, 2.0)
      m.weight.data.uniform_(0.5, 1.5)
  torch.save(model.state_dict(), path)
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
  ('arch', 'first_conv', 'model_overrides'),
  [
    ('resnet18', 'conv1', {}),
    # DenseNet through its scanned blocks (the unrolled ones train in test_train.py): the same
    # variables, and a shorter compile (this test: 47 s -> 35 s alone).
    pytest.param('densenet121', 'conv0', {'model.scan_chunk': 8}, marks=pytest.mark.slow),
  ],
)
def test_torchvision_pth_to_frozen_fine_tuning(
  data_dir, tmp_path, monkeypatch, arch, first_conv, model_overrides
):
  """.pth -> convert -> train (frozen backbone, 32 px, 4 steps): the state the loop starts from
  holds the torchvision weights in Flax layout; after training the backbone params and BatchNorm
  statistics are bitwise unchanged and the 3-class head has learned."""
  torch_sd = _torchvision_pth(tmp_path / f'{arch}.pth', arch)
  weights.convert(arch, tmp_path / f'{arch}.pth', tmp_path / 'weights')  # `launch.convert`

  started = {}
  real_fresh_state = loop.fresh_state

  def spy(run, key):  # the exact state training starts from (copied: the step donates it)
    state = real_fresh_state(run, key)
    started.update(_flat({'params': state.params, 'batch_stats': state.batch_stats}))
    return state

  monkeypatch.setattr(loop, 'fresh_state', spy)
  config, _ = th.tiny_config(
    data_dir,
    **{
      'model.name': arch,
      'model.pretrained': str(tmp_path / 'weights'),
      'optim.backbone_lr_mult': 0.0,
      'optim.learning_rate': 0.01,
      'train.num_epochs': 1,
      'train.max_steps': 4,
      'checkpoint.every_steps': 100,
      'eval.batch_size': 16,
      **model_overrides,
    },
  )
  loop.train_and_evaluate(config, str(tmp_path / 'work'))

  # Step 0: the converted torchvision weights, checked directly against torch's tensors.
  prefix = 'features.' if arch.startswith('densenet') else ''
  np.testing.assert_array_equal(
    started[f"['params']['{first_conv}']['kernel']"],
    torch_sd[f'{prefix}{first_conv}.weight'].transpose(2, 3, 1, 0),
  )
  key_map = weights.torchvision_key_map(arch)
  head = models.HEAD_PARAMS[arch]
  mapped = set()
  for key, target in key_map.items():
    if target.path[0] == head:
      continue
    name = ''.join(f"['{p}']" for p in (target.collection, *target.path))
    np.testing.assert_array_equal(
      started[name], weights.to_flax_layout(torch_sd[key], target.layout), err_msg=key
    )
    mapped.add(name)
  # The map covers the whole starting state but the fresh head: no backbone leaf left at its
  # random init without being compared to torch (resnet18: 60 params + 40 BatchNorm statistics).
  backbone = {k for k in started if not k.startswith(f"['params']['{head}']")}
  assert sorted(backbone - mapped) == []
  assert mapped == backbone
  assert len(backbone) == {'resnet18': 100, 'densenet121': 604}[arch]

  # After 4 frozen steps: backbone and BatchNorm statistics bitwise, head moved, loss finite.
  final = th.final_params(tmp_path / 'work')
  assert int(final['step']) == 4
  moved = []
  for k, v in started.items():
    name = k.replace("']['", '/').strip("[]'")
    if name.startswith(f'params/{head}/'):
      moved.append(not np.array_equal(final[name], v))
    else:
      np.testing.assert_array_equal(final[name], v, err_msg=name)
  assert moved and all(moved)
  assert np.all(np.isfinite(th.losses(tmp_path / 'work')))
