r"""The small BatchNorm CNN (`cnn_bn`) trained from scratch on the COVID-19 Radiography Database.

A baseline for the fine-tuned torchvision models (configs/densenet201.py, resnet101.py,
vgg19.py): ~100k parameters, no pretrained weights. Chowdhury et al. 2020 report 97.9% 3-class
accuracy with pretrained DenseNet201 and augmentation; a from-scratch CNN this small is expected to
stay below that. We have not run this config on the full data set here; read the real number in
WORKDIR/results.json.

  python -m launch.train --config configs/scratch_cnn.py --workdir workdirs/scratch_cnn \
      --config.data.manual_dir=/data/COVID-19_Radiography_Dataset
  python -m launch.train --config configs/scratch_cnn.py:runlocal --workdir /tmp/scratch

Hyperparameters, and why:
- 224 px: the same input as the fine-tuned models, so the comparison is about the model.
- AdamW, peak LR 3e-3 (no pretrained features to protect; BatchNorm tolerates a large LR), weight
  decay 1e-4 on kernels, 1 warmup epoch + cosine over 30 epochs (from scratch needs more epochs).
- Label smoothing 0.1, oversampling, the default augmentation, early stopping on validation macro
  F1 with patience 6: the same choices as the fine-tuning recipe (configs/densenet201.py explains
  them).
- Batch 64: the model is tiny, a larger batch keeps an accelerator busy.

Args (comma-separated after a colon): `runlocal` (CPU smoke run), `bf16`.
"""

from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, 'configs/scratch_cnn.py')
  c = base.get_base_config()
  c.model.name = 'cnn_bn'
  c.model.pretrained = ''
  c.model.dtype = 'bfloat16' if 'bf16' in args else 'auto'
  c.data.source = 'folder'
  c.data.builder_config = '3class'
  c.data.image_size = 224
  c.data.sampling = 'oversample'
  c.data.num_workers = 8
  c.train.batch_size = 64
  c.train.num_epochs = 30
  c.train.label_smoothing = 0.1
  c.train.log_every_steps = 50
  c.optim.name = 'adamw'
  c.optim.learning_rate = 3e-3
  c.optim.backbone_lr_mult = 1.0
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 1.0
  c.early_stopping.patience = 6
  c.checkpoint.every_steps = 500
  if 'runlocal' in args:
    base.shrink_for_cpu(c)
  c.lock()
  return c
