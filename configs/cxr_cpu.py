r"""Real chest X-rays on a 2-core CPU in 10 minutes: ResNet-18 from scratch (draft; see RESULTS.md).

  python -m launch.train --config configs/cxr_cpu.py --workdir workdirs/cxr_cpu \
      --config.data.manual_dir=../shared/data/cxr_dev

Args (after a colon): `runlocal` shrinks it to a seconds-long smoke run on phantom data.
"""

from configs import base


def get_config(arg: str = ''):
  c = base.get_base_config()
  c.model.name = 'resnet18'
  c.data.source = 'folder'
  c.data.builder_config = '3class'
  c.data.image_size = 128
  c.data.stored_size = 224
  c.data.sampling = 'balanced'
  c.data.num_workers = 0
  c.train.batch_size = 32
  c.train.num_epochs = 10
  c.train.label_smoothing = 0.1
  c.train.log_every_steps = 13
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 1.0
  c.early_stopping.patience = 100
  c.checkpoint.every_steps = 10_000
  c.checkpoint.max_to_keep = 1
  if arg == 'runlocal':
    c.data.source = 'phantom'
    c.data.image_size = 32
    c.data.stored_size = 0
    c.data.phantom.image_size = 32
    c.data.phantom.num_per_class = 16
    c.train.batch_size = 8
    c.train.num_epochs = 1
    c.train.max_steps = 3
    c.eval.batch_size = 8
    c.eval.bootstrap = 20
  elif arg:
    raise ValueError(f'configs/cxr_cpu.py: unknown arg {arg!r}; use "" or "runlocal".')
  c.lock()
  return c
