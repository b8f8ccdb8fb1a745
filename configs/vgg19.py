r"""VGG19 fine-tuned from torchvision ImageNet weights on the COVID-19 Radiography Database.

Reference, not a claim: Chowdhury et al. 2020 (IEEE Access 8:132665) report 97.9% 3-class accuracy
for their best model (DenseNet201 with image augmentation, 5-fold cross-validation on the 2020
release of the database); VGG19 was among the networks they compared. We have not run this config
on the full data set here; read the real number in WORKDIR/results.json.

  python -m launch.convert --arch vgg19 --source torchvision --out ~/.cache/jaxcxr/weights/vgg19
  python -m launch.train --config configs/vgg19.py --workdir workdirs/vgg19 \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  python -m launch.train --config configs/vgg19.py:runlocal --workdir /tmp/vgg19  # CPU smoke

Recipe of configs/densenet201.py (see its docstring), except:
- Head LR 5e-4, backbone x0.1 = 5e-5: VGG has no BatchNorm and ~120M of its 140M parameters sit in
  the pretrained fully connected layers fc1/fc2 (only the last layer is new), which fine-tune less
  stably than BN networks at 1e-4.
- Dropout 0.5 in the classifier, as torchvision.

`runlocal` trains the stand-in `cnn_small` (plain conv/ReLU/max-pool, no BatchNorm: VGG's design in
miniature). VGG19 itself is slow on CPU even at 32 px: its adaptive 7x7 pool keeps the
102M-parameter fc1, so each checkpoint is 1.7 GB with the Adam moments, and the runlocal run took
220 s on a 2-core CPU. `--config.model.name=vgg19` on top of `runlocal` runs it anyway.

Args (comma-separated after a colon): `runlocal` (CPU smoke run), `bf16`.
"""

from configs import base

ARCH = 'vgg19'


def get_config(arg: str = ''):
  c = base.fine_tune_config(ARCH, base.parse_arg(arg, 'configs/vgg19.py'))
  c.optim.learning_rate = 5e-4
  c.lock()
  return c
