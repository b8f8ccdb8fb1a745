r"""ResNet101 (torchvision v1.5) fine-tuned from ImageNet weights on the COVID-19 Radiography
Database.

Reference, not a claim: Chowdhury et al. 2020 (IEEE Access 8:132665) report 97.9% 3-class accuracy
for their best model (DenseNet201 with image augmentation, 5-fold cross-validation on the 2020
release of the database); ResNet101 was among the networks they compared, slightly behind it. We
have not run this config on the full data set here; read the real number in
WORKDIR/results.json. Same recipe as configs/densenet201.py (see its docstring for the reasons):
224 px, AdamW head 1e-3 / backbone 1e-4, weight decay 0.05, 1 warmup epoch + cosine over 20 epochs,
label smoothing 0.1, oversampling, early stopping on validation macro F1 (patience 5).

  python -m launch.convert --arch resnet101 --source torchvision \
      --out ~/.cache/jaxcxr/weights/resnet101
  python -m launch.train --config configs/resnet101.py --workdir workdirs/resnet101 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  python -m launch.train --config configs/resnet101.py:runlocal --workdir /tmp/rn101  # CPU smoke

`--source torchvision` is the IMAGENET1K_V1 file (resnet101-63fe2227.pth, 77.4% ImageNet top-1);
the V2 recipe (resnet101-cd907fc2.pth, 81.9%) can be given as the URL instead.

`runlocal` trains the stand-in `cnn_bn` (ResNet101's runlocal took 330 s on a 2-core CPU, mostly
XLA compilation); `--config.model.name=resnet101` on top of `runlocal` runs the real one.

Args (comma-separated after a colon): `runlocal` (CPU smoke run), `bf16`.
"""

from configs import base

ARCH = 'resnet101'


def get_config(arg: str = ''):
  c = base.fine_tune_config(ARCH, base.parse_arg(arg, 'configs/resnet101.py'))
  c.model.cpu_ynn_fusion = True  # CPU: faster resnet101 steps (docs/PERFORMANCE.md)
  c.lock()
  return c
