r"""DenseNet201 fine-tuned from torchvision ImageNet weights on the COVID-19 Radiography Database.

Reference, not a claim: Chowdhury et al. 2020 (IEEE Access 8:132665) report 97.9% 3-class accuracy
(COVID-19 / normal / viral pneumonia) for DenseNet201 trained with image augmentation, with 5-fold
cross-validation on the 2020 release of the database (423 COVID-19, 1,485 viral pneumonia, 1,579
normal). The Kaggle database is larger now (3,616 COVID-19, 10,192 normal, 1,345 viral pneumonia)
and we report one stratified 70/15/15 split, so the numbers are comparable in kind but not
identical in protocol. We have not run this config on the full data set in this repository; expect
test accuracy in the high 90s and read the real number in WORKDIR/results.json and report.md.

  python -m launch.convert --arch densenet201 --source torchvision \
      --out ~/.cache/jaxcxr/weights/densenet201
  python -m launch.train --config configs/densenet201.py --workdir workdirs/densenet201 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  # the default dtype "auto" computes in bfloat16 on GPU/TPU, float32 on CPU (:bf16 forces bf16)
  # CPU smoke run (phantom data, 32 px, random init, 3 steps, stand-in model; see below):
  python -m launch.train --config configs/densenet201.py:runlocal --workdir /tmp/dn201

Hyperparameters, and why:
- 224 px input: the ImageNet resolution the weights were trained at (the paper also used 224).
- AdamW, head peak LR 1e-3 and `backbone_lr_mult` 0.1 (backbone 1e-4): the new 3-way head starts
  from random and needs large steps; 1e-4 is the usual full fine-tuning LR for ImageNet CNNs on a
  shifted domain (greyscale radiographs), small enough not to wash out the pretrained features.
  Weight decay 0.05 on kernels only (decoupled; optax multiplies it by the LR).
- 1 warmup epoch, then cosine to 1% of the peak over 20 epochs: the warmup keeps the random
  head's first gradients from disturbing the backbone's BatchNorm-calibrated features.
- Label smoothing 0.1: the labels are from mixed public sources and partly noisy.
- Oversampling (1/class-count weights, with replacement): viral pneumonia is ~9% of the 3-class
  data; oversampling gives the minority classes equal weight per batch.
- Augmentation as the paper (small rotation, translation, zoom) plus mild brightness/contrast; no
  horizontal flips (the heart is on the left).
- Early stopping on validation macro F1 (patience 5): macro F1 weights the rare classes as much as
  the common one, which is what screening cares about; accuracy would favour "normal".
- Batch 32 fits DenseNet201 at 224 px in float32 on a 16 GB GPU; `memory_efficient` (remat) can
  raise it.

`runlocal` is a CPU smoke run of the config's machinery (phantom data, 32 px, random init, one
epoch capped at 3 steps) with a small **stand-in model** (`RUNLOCAL_STANDIN`): on the 2-core CPU
this was written on (shared, load ~9), XLA spent over 13 minutes compiling DenseNet201's train
step without finishing, ResNet101's runlocal took 330 s and VGG19's 220 s (1.7 GB checkpoints),
while a stand-in trial takes about a minute. Add `--config.model.name=densenet201` to smoke-test
the real architecture anyway.

Args (comma-separated after a colon): `runlocal` (CPU smoke run), `bf16`.
"""

import os

from configs import base

ARCH = 'densenet201'
# runlocal's stand-ins: small CNNs that compile in seconds on CPU. cnn_small (conv/ReLU/max-pool,
# no BatchNorm) is VGG's design in miniature; cnn_bn stands in for the BatchNorm networks.
RUNLOCAL_STANDIN = {'vgg19': 'cnn_small', 'resnet101': 'cnn_bn', 'densenet201': 'cnn_bn'}


def weights_dir(arch: str) -> str:
  """Where `python -m launch.convert --arch ARCH ... --out` puts converted weights by default."""
  root = os.environ.get('JAXCXR_WEIGHTS_DIR', '~/.cache/jaxcxr/weights')
  return os.path.join(os.path.expanduser(root), arch)


def parse_arg(arg: str, path: str) -> set[str]:
  args = set(filter(None, arg.split(',')))
  unknown = args - {'runlocal', 'bf16'}
  if unknown:
    raise ValueError(f'{path}: unknown arg(s) {sorted(unknown)}; use runlocal and/or bf16.')
  return args


def fine_tune_config(arch: str, args: set[str]):
  """The shared fine-tuning recipe of the torchvision models (see the docstring above)."""
  c = base.get_base_config()
  c.model.name = arch
  c.model.pretrained = weights_dir(arch)
  c.model.dtype = 'bfloat16' if 'bf16' in args else 'auto'
  c.data.source = 'folder'
  c.data.builder_config = '3class'
  c.data.image_size = 224
  c.data.sampling = 'oversample'
  c.data.num_workers = 8
  c.train.batch_size = 32
  c.train.num_epochs = 20
  c.train.label_smoothing = 0.1
  c.train.log_every_steps = 50
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.backbone_lr_mult = 0.1
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 1.0
  c.optim.min_lr_ratio = 0.01
  c.early_stopping.metric = 'val_macro_f1'
  c.early_stopping.mode = 'max'
  c.early_stopping.patience = 5
  c.checkpoint.every_steps = 500
  c.eval.batch_size = 64
  if 'runlocal' in args:
    shrink_for_cpu(c)
    c.model.name = RUNLOCAL_STANDIN.get(arch, arch)
  return c


def shrink_for_cpu(c) -> None:
  """A CPU smoke run: phantom data, 32 px, random init, one short epoch (about a minute)."""
  c.model.pretrained = ''
  c.model.dtype = 'float32'
  c.data.source = 'phantom'
  c.data.image_size = 32
  c.data.phantom.image_size = 32
  c.data.phantom.num_per_class = 16
  c.data.num_workers = 0
  c.train.batch_size = 8
  c.train.num_epochs = 1
  c.train.max_steps = 3
  c.train.log_every_steps = 1
  c.optim.warmup_epochs = 0.0
  c.eval.batch_size = 8
  c.eval.bootstrap = 20
  c.checkpoint.every_steps = 100
  c.checkpoint.async_save = False


def get_config(arg: str = ''):
  c = fine_tune_config(ARCH, parse_arg(arg, 'configs/densenet201.py'))
  c.lock()
  return c
