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
epoch capped at 3 steps) with a small **stand-in model** (`base.RUNLOCAL_STANDIN`): on the 2-core
CPU this was written on (shared, load ~9), XLA spent over 13 minutes compiling DenseNet201's train
step without finishing, ResNet101's runlocal took 330 s and VGG19's 220 s (1.7 GB checkpoints),
while a stand-in trial takes about a minute. Add `--config.model.name=densenet201` to smoke-test
the real architecture anyway.

Args (comma-separated after a colon): `runlocal` (CPU smoke run), `bf16`.
"""

from configs import base

ARCH = 'densenet201'


def get_config(arg: str = ''):
  c = base.fine_tune_config(ARCH, base.parse_arg(arg, 'configs/densenet201.py'))
  c.lock()
  return c
