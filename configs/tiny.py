"""Seconds-long run for tests and smoke checks: 32 px phantom images, cnn_bn, batch 8, 2 epochs.

  python -m launch.train --config configs/tiny.py --workdir /tmp/tiny

Takes no args (anything after a colon is an error).
"""

from configs import base


def get_config(arg: str = ''):
  base.parse_arg(arg, 'configs/tiny.py', allowed=())
  c = base.get_base_config()
  c.data.image_size = 32
  c.data.phantom.image_size = 32
  c.data.phantom.num_per_class = 16
  c.data.num_workers = 0
  c.model.name = 'cnn_bn'
  c.train.batch_size = 8
  c.train.num_epochs = 2
  c.train.log_every_steps = 1
  c.eval.batch_size = 8
  c.eval.bootstrap = 20
  c.checkpoint.every_steps = 5  # one per epoch (5 steps); tests of mid-epoch saves set their own
  c.checkpoint.async_save = False
  c.optim.warmup_epochs = 0.0
  c.lock()
  return c
