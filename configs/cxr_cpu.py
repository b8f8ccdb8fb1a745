r"""Real chest X-rays on a 2-core CPU in 10 minutes: a half-width ResNet-18 from scratch.

  python -m launch.train --config configs/cxr_cpu.py --workdir workdirs/cxr_cpu \
      --config.data.manual_dir=../shared/data/cxr_dev

The recipe (docs/RESULTS.md has the ablations): `cnn_res18_half` (ResNet-18 layout at half width,
1-channel 7x7 stem, 2.8M parameters) from scratch at 112 px (stored once at 224 px, so other
resolutions need no re-preparation), class-balanced epochs drawn without replacement, the default
affine + intensity augmentation, AdamW 1e-3 (weight decay 0.05) with one warm-up epoch and cosine
decay, label smoothing 0.1, batch 32, 16 epochs, and an EMA of the weights (decay 0.99) that is
validated, selected and evaluated. The best epoch is chosen on validation macro-F1; the test split
is only scored at the end, with test-time augmentation (softmax averaged over 7 shifted / zoomed
views; `launch.predict` and `launch.evaluate` do the same).

Measured on ../shared/data/cxr_dev (1,200 films; test split 180 films, never used for selection),
2-core CPU, split seeds 0 / 1 / 2 (2026-11-30): test macro-F1 0.905 / 0.912 / 0.878, mean 0.899
(0.886 without the test-time augmentation); 404-484 s wall per run, everything included
(preparation, compilation, training, evaluation, report). On another 2-core Xeon (model 207) the
next day, same command and seeds: 0.889 / 0.878 / 0.872, mean 0.879, 266-287 s (XLA:CPU's rounding
differs per CPU and training amplifies it). The issue-#13 target (macro-F1 >= 0.95)
is NOT reached. The dev set is confounded (every viral-pneumonia film is of a child from one
hospital): read the report's shortcut indicator and Grad-CAM overlays before trusting a score.

Args (after a colon): `runlocal` shrinks it to a seconds-long smoke run on phantom data;
`pretrained` fine-tunes torchvision's ImageNet ResNet-18 instead (full width, 3-channel stem,
112 px, 6 epochs, backbone at 0.1x the head's learning rate), from the weights that
`python -m launch.convert --arch resnet18 --source torchvision --out ~/.cache/jaxcxr/weights/resnet18`
writes (`$JAXCXR_WEIGHTS_DIR/resnet18`). Its quality is NOT measured: no ImageNet weights can be
downloaded on the development machines. Its time is: 2026-12-01, 2-core Xeon (model 207),
stand-in weights converted from a randomly initialised torchvision ResNet-18: 309 s everything
included (the default recipe: 266-287 s on that CPU, 404-484 s on the slower one the day before,
so expect ~450 s there). 128 px and 8 epochs took 510 s on the fast CPU: too close to the budget.
"""

from configs import base


def get_config(arg: str = ''):
  args = base.parse_arg(arg, 'configs/cxr_cpu.py', allowed=('runlocal', 'pretrained'))
  c = base.get_base_config()
  c.model.name = 'cnn_res18_half'
  c.data.source = 'folder'
  c.data.builder_config = '3class'
  c.data.image_size = 112
  c.data.stored_size = 224
  c.data.sampling = 'balanced'
  # The shipped model trains on 90 % of the films: no internal test split (the recipe is scored on
  # external films: launch.evaluate --eval_dir), 10 % validation for monitoring and the
  # out-of-distribution threshold; the last epoch ships (the cosine schedule anneals).
  c.data.val_fraction = 0.1
  c.data.test_fraction = 0.0
  c.data.num_workers = 0          # on 2 cores, worker processes only compete with the step
  c.train.batch_size = 32
  c.train.num_epochs = 20
  c.train.label_smoothing = 0.1
  c.train.ema_decay = 0.99
  c.train.log_every_steps = 13
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 1.0
  c.early_stopping.patience = 100  # never stop the short schedule early
  c.eval.tta = True                # the final test score: softmax over 7 shifted / zoomed views
  c.checkpoint.every_steps = 10_000
  c.checkpoint.max_to_keep = 1
  if 'pretrained' in args:
    c.model.name = 'resnet18'
    c.model.pretrained = base.weights_dir('resnet18')
    c.train.num_epochs = 6
    c.optim.backbone_lr_mult = 0.1
  if 'runlocal' in args:
    base.shrink_for_cpu(c)
  c.lock()
  return c
