r"""Quality benchmark: the jaxcxr recipe vs a plain torchvision ResNet-18, same images, same budget.

  python -m launch.benchmark_quality --manual_dir ../shared/data/cxr_dev [--budget_s 600] \
      [--out /tmp/benchmark_quality] [--config configs/cxr_cpu.py] [--jax_override=--config.x=y]
  # Both train on the whole training folder; both are scored on the same external films:
  python -m launch.benchmark_quality --manual_dir ../shared/data/cxr_dev \
      --eval_dir ../shared/data/cxr_eval
  # A recipe change tried on the jaxcxr side alone (one row; the torch side is the same per seed):
  python -m launch.benchmark_quality --notorch --manual_dir ../shared/data/cxr_dev \
      --eval_dir ../shared/data/cxr_eval --jax_override=--config.data.image_size=128

Runs jaxcxr (`launch.train` with the recipe: dataset preparation, compilation, training,
evaluation, all timed) and then the torch baseline of issue #13 on the training files of the split
jaxcxr prepared, scores both on the same test images and prints one table (macro-F1, accuracy,
per-class recall, wall time, images/s), then both sides' robustness sections side by side (the
test films zoomed, their border frame or corner text from a film of another class; the torch
worker predicts them after training, within its budget). See `jaxcxr.benchmarks.quality` and
docs/RESULTS.md.
torch is needed only here (requirements-test.txt); the library never imports it.
"""

import json
import os
import sys
import time

from absl import app, flags

from jaxcxr.benchmarks import quality as benchmark_quality
from jaxcxr.data import images as images_lib
from jaxcxr.evaluation import robustness
from jaxcxr.training import errors
from launch import cli

_MANUAL_DIR = flags.DEFINE_string(
  'manual_dir', None, 'Kaggle-layout folder (COVID/, Normal/, Viral Pneumonia/).'
)
_EVAL_DIR = flags.DEFINE_string(
  'eval_dir',
  '',
  'External Kaggle-layout folder to score both '
  'sides on (both then train on the whole --manual_dir).',
)
_BUDGET = flags.DEFINE_float('budget_s', 600.0, 'Wall-clock budget of each side, seconds.')
_OUT = flags.DEFINE_string('out', '/tmp/jaxcxr_benchmark_quality', 'Output folder (rewritten).')
_CONFIG = flags.DEFINE_string('config', 'configs/cxr_cpu.py', 'jaxcxr config file[:arg].')
_JAX_OVERRIDES = flags.DEFINE_multi_string(
  'jax_override', [], 'Extra --config.x=y flag for the jaxcxr side (repeatable).'
)
_RUN_TORCH = flags.DEFINE_bool(
  'torch',
  True,
  'Run the torch side too (--notorch: the jaxcxr row '
  'alone, to try a recipe change before the side-by-side runs).',
)
_TORCH_EPOCHS = flags.DEFINE_integer('torch_epochs', 8, 'torch: epochs (one-cycle length).')
_TORCH_SIZE = flags.DEFINE_integer('torch_image_size', 128, 'torch: input side, pixels.')
_TORCH_BATCH = flags.DEFINE_integer('torch_batch', 32, 'torch: batch size.')
_TORCH_LR = flags.DEFINE_float('torch_lr', 1e-3, 'torch: AdamW peak learning rate (one-cycle).')
_SEED = flags.DEFINE_integer('seed', 0, 'torch: seed.')
# Internal: the torch worker (a subprocess of the driver).
_WORKER = flags.DEFINE_bool('torch_worker', False, 'internal')
_SPLITS = flags.DEFINE_string('splits', '', 'internal: splits.json of the driver')
_WORKER_OUT = flags.DEFINE_string('worker_out', '', 'internal: result JSON')


def _torch_worker() -> dict:
  """The issue-#13 torchvision recipe: train on the train files, predict the test files."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import torch
  import torchvision
  from torchvision.transforms import v2

  # pylint: enable=g-import-not-at-top
  t0 = time.perf_counter()
  budget = _BUDGET.value
  torch.manual_seed(_SEED.value)
  torch.set_num_threads(os.cpu_count() or 1)
  with open(_SPLITS.value) as f:
    splits = json.load(f)
  size = _TORCH_SIZE.value

  def load(items):  # decode + resize once (as torchvision's Resize would, antialiased bilinear)
    x = np.stack([images_lib.resize_grey(images_lib.load_grey(p), size) for p, _ in items])
    return torch.from_numpy(x)[:, None], torch.tensor([label for _, label in items])

  train_x, train_y = load(splits['train'])
  test_x, test_y = load(splits['test'])
  model = torchvision.models.resnet18(num_classes=len(splits['class_names']))
  model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # 1-channel stem
  affine = v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1))
  batch, epochs = _TORCH_BATCH.value, _TORCH_EPOCHS.value
  steps_per_epoch = -(-len(train_x) // batch)
  opt = torch.optim.AdamW(model.parameters(), lr=_TORCH_LR.value)
  sched = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=_TORCH_LR.value, total_steps=epochs * steps_per_epoch
  )

  def to_input(x_uint8):
    return (x_uint8.float() / 255.0 - 0.5) / 0.25

  seen, train_time, stopped, steps = 0, 0.0, False, 0
  model.train()
  for _ in range(epochs):
    perm = torch.randperm(len(train_x))
    for start in range(0, len(train_x), batch):
      # Keep time for predicting the test set (about 3x faster per image than a train step).
      rate = seen / train_time if train_time else 0.0
      reserve = 10.0 + (len(test_x) / (3 * rate) if rate else 60.0)
      if time.perf_counter() - t0 + reserve > budget:
        stopped = True
        break
      t = time.perf_counter()
      idx = perm[start : start + batch]
      x = torch.stack([affine(img) for img in train_x[idx]])
      loss = torch.nn.functional.cross_entropy(model(to_input(x)), train_y[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      steps += 1
      seen += len(idx)
      train_time += time.perf_counter() - t
    if stopped:
      break
  model.eval()

  def predict(x_uint8):
    out = []
    with torch.inference_mode():
      for start in range(0, len(x_uint8), 64):
        out.append(torch.softmax(model(to_input(x_uint8[start : start + 64])), -1).numpy())
    return np.concatenate(out)

  probs = predict(test_x)
  # The robustness section's films (jaxcxr.evaluation.robustness, the same partners as the jaxcxr
  # side): predicted while the budget lasts (the training reserve above covers the clean films
  # only, so the baseline trains exactly as before).
  mates = robustness.partners(test_y.numpy(), seed=0)
  robust, per_set = {}, None
  for kind in robustness.PERTURBATIONS:
    if per_set and time.perf_counter() - t0 + 1.5 * per_set > budget:
      break
    t = time.perf_counter()
    films = robustness.perturb(test_x[:, 0].numpy(), kind, mates, (0.9, 1.1))
    robust[kind] = predict(torch.from_numpy(films)[:, None]).tolist()
    per_set = time.perf_counter() - t
  return {
    'probs': probs.tolist(),
    'robust_probs': robust,
    'train_img_s': seen / max(train_time, 1e-9),
    'epochs_done': steps / steps_per_epoch,
    'stopped_by_budget': stopped,
    'torch_version': torch.__version__,
    'recipe': (
      f'resnet18 1-ch stem {size} px, {epochs} epochs, batch {batch}, AdamW '
      f'{_TORCH_LR.value:g} one-cycle, RandomAffine(10, 0.06, 0.9-1.1), CE'
    ),
  }


def _torch_command(splits: str, out: str, budget_s: float) -> list[str]:
  return [
    sys.executable,
    '-m',
    'launch.benchmark_quality',
    '--torch_worker',
    f'--splits={splits}',
    f'--worker_out={out}',
    f'--budget_s={budget_s}',
    f'--torch_epochs={_TORCH_EPOCHS.value}',
    f'--torch_image_size={_TORCH_SIZE.value}',
    f'--torch_batch={_TORCH_BATCH.value}',
    f'--torch_lr={_TORCH_LR.value}',
    f'--seed={_SEED.value}',
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _WORKER.value:
    result = _torch_worker()
    with open(_WORKER_OUT.value, 'w') as f:
      json.dump(result, f)
    return
  if not _MANUAL_DIR.value:
    cli.fail('pass --manual_dir=<Kaggle-layout folder>')
  print(f'budget {_BUDGET.value:.0f} s per side; load average {os.getloadavg()[0]:.2f}', flush=True)
  try:
    summary = benchmark_quality.run(
      _MANUAL_DIR.value,
      _OUT.value,
      budget_s=_BUDGET.value,
      config=_CONFIG.value,
      jax_overrides=_JAX_OVERRIDES.value,
      torch_command=_torch_command if _RUN_TORCH.value else None,
      eval_dir=_EVAL_DIR.value,
    )
  except (FileNotFoundError, ValueError, RuntimeError) as e:
    cli.fail(e, errors.EXIT_USAGE)
  print(summary['table'])
  if summary.get('robustness_table'):
    print('\nRobustness (jaxcxr.evaluation.robustness; no test-time augmentation on either side):')
    print(summary['robustness_table'])
  load = summary['loadavg']
  after_torch = f', after torch {load["after_torch"]:.2f}' if 'after_torch' in load else ''
  print(
    f'load average: start {load["start"]:.2f}, after jaxcxr {load["after_jaxcxr"]:.2f}'
    f'{after_torch}; logs and JSON in {os.path.abspath(_OUT.value)}'
  )


if __name__ == '__main__':
  cli.run(main)
