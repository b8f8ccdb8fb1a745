"""Defaults and helpers shared by every experiment config.

Each experiment file (`configs/<name>.py`) calls `get_base_config()` and overrides what differs, so
every key a launcher accepts exists here and `ml_collections` can lock the config (a mistyped
`--config.x.y` override is then an error that names the key). `parse_arg` reads the `:arg` of
`--config configs/<name>.py:arg` and rejects args the file does not know; `fine_tune_config` is
the recipe of the torchvision models (configs/densenet201.py gives the reasons) and
`shrink_for_cpu` the `runlocal` smoke run.
"""

import os

import ml_collections

# runlocal's stand-ins: small CNNs that compile in seconds on CPU. cnn_small (conv/ReLU/max-pool,
# no BatchNorm) is VGG's design in miniature; cnn_bn stands in for the BatchNorm networks.
RUNLOCAL_STANDIN = {'vgg19': 'cnn_small', 'resnet101': 'cnn_bn', 'densenet201': 'cnn_bn'}


def get_data_config() -> ml_collections.ConfigDict:
  """Dataset, split, sampling, augmentation and loader settings (`config.data`)."""
  d = ml_collections.ConfigDict()
  # 'phantom': synthetic chest radiographs generated on first use (no download);
  # 'folder': a Kaggle-layout folder given by `manual_dir` (prepared into TFDS on first use).
  d.source = 'phantom'
  d.manual_dir = ''  # Kaggle layout: COVID/, Normal/, Viral Pneumonia/[, Lung_Opacity/]
  d.data_dir = ''  # TFDS data_dir; '' -> $JAXCXR_DATA_DIR or ~/.cache/jaxcxr/tfds
  d.builder_config = '3class'  # '3class' (paper) or '4class' (+ Lung_Opacity)
  d.image_size = 224  # model input side, pixels
  # Side (pixels) images are resized to when the TFDS dataset is prepared; the loader resamples
  # stored -> image_size (train: inside the one augmentation warp). 0 -> image_size.
  d.stored_size = 0
  d.split_seed = 0
  d.val_fraction = 0.15
  d.test_fraction = 0.15
  d.lookalike_threshold = 8  # look-alike films (16x16 dHash within this many of 256 bits) share a
  # split; -1: film by film
  d.on_bad_image = 'error'  # 'error' or 'skip' (skips are counted and reported)
  d.max_image_pixels = 64_000_000  # larger images are refused (decompression-bomb guard)
  # 'oversample': WeightedRandomSampler(1/class count, replacement=True) semantics;
  # 'none': plain shuffled epochs; 'class_weighted_loss': no resampling, loss weighted 1/count.
  d.sampling = 'oversample'
  d.num_workers = 2  # Grain worker processes (0 = in-process)
  d.prefetch = 2  # batches buffered per worker
  d.read_threads = 2  # threads per loader process (reads and cv2 warps release the GIL)

  d.augment = ml_collections.ConfigDict()
  d.augment.enabled = True
  d.augment.rotation_deg = 10.0
  d.augment.zoom = (0.9, 1.1)  # scale range
  d.augment.translate = 0.06  # fraction of the side
  d.augment.brightness = 0.1  # +- fraction of the range
  d.augment.contrast = 0.1  # +- fraction
  d.augment.hflip = False  # chest anatomy is not left/right symmetric

  d.phantom = ml_collections.ConfigDict()
  d.phantom.num_per_class = 300
  d.phantom.image_size = 128
  d.phantom.seed = 0
  return d


def get_base_config() -> ml_collections.ConfigDict:
  """Every key the training launcher accepts, with the defaults of the embedded default run."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = get_data_config()

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn_bn'  # any of jaxcxr.models.NAMES
  c.model.pretrained = ''  # dir written by `python -m launch.convert` ('' = random init)
  c.model.dtype = (
    'auto'  # compute dtype: 'auto' (bf16 on GPU/TPU, f32 on CPU), 'float32', 'bfloat16'
  )
  c.model.dropout = -1.0  # -1 keeps the architecture's default (VGG: 0.5)
  c.model.memory_efficient = False  # DenseNet: rematerialise concat+bottleneck
  c.model.scan_chunk = 0  # DenseNet: dense layers as a lax.scan over chunks of N (0: unrolled)
  c.model.cpu_ynn_fusion = False  # XLA:CPU: elementwise ops fused into YNNPACK convs / dots
  # (resnet101's train step 1.8x faster, the others' 2-6 % slower)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch over all devices and processes
  c.train.num_epochs = 10
  c.train.label_smoothing = 0.0
  c.train.ema_decay = 0.0  # > 0: validate, select and evaluate an EMA of the weights
  c.train.mixup_alpha = 0.0  # > 0: Mixup, lam ~ Beta(alpha, alpha) (jaxcxr.training.mixing)
  c.train.cutmix_alpha = 0.0  # > 0: CutMix; both > 0: one of the two per batch, 50 / 50
  c.train.log_every_steps = 10
  c.train.param_sharding = 'replicated'  # or 'fsdp'
  c.train.on_nonfinite = 'error'  # 'error' (stop, naming the step) or 'skip' (drop update)
  c.train.max_steps = -1  # >0 caps the run (smoke tests); -1 = num_epochs * steps_per_epoch

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'  # 'adamw' or 'sgd'
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.momentum = 0.9  # sgd
  c.optim.nesterov = False  # sgd
  c.optim.schedule = 'cosine'  # 'constant', 'cosine', 'step' or 'plateau'
  c.optim.warmup_epochs = 1.0
  c.optim.min_lr_ratio = 0.01  # cosine floor, fraction of the peak
  c.optim.step_epochs = (30, 60)
  c.optim.step_gamma = 0.1
  c.optim.plateau_factor = 0.5
  c.optim.plateau_patience = 2
  c.optim.grad_clip_norm = 1.0  # 0 = off
  c.optim.backbone_lr_mult = 1.0  # 0 freezes the backbone (BatchNorm too); 0.1 = discriminative

  c.early_stopping = ml_collections.ConfigDict()
  # Early stopping reads `metric`; the run ships (best/) the checkpoint `select` names: 'last'
  # epoch, 'best' epoch by `metric`, or 'auto' = last for annealing schedules (cosine, step), else
  # best (jaxcxr/training/early_stopping.py says why; docs/RESULTS.md has the measurements).
  c.early_stopping.metric = 'val_loss'  # any key of the per-epoch validation metrics
  c.early_stopping.mode = 'min'
  c.early_stopping.patience = 5
  c.early_stopping.min_delta = 1e-4
  c.early_stopping.select = 'auto'

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 200  # plus one at every epoch end
  c.checkpoint.max_to_keep = 3
  c.checkpoint.async_save = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64
  c.eval.bootstrap = 1000  # resamples for the 95% confidence intervals
  c.eval.split = 'test'
  c.eval.shortcut = False  # report: Grad-CAM shortcut indicator + source-resolution examples
  c.eval.ood = True  # report: the OOD section (the score itself is fitted either way)
  c.eval.robustness = True  # report: the split under 7 perturbations (evaluation/robustness.py)
  c.eval.figures = True  # report: the PNG figures (confusion matrix, ROC, reliability, curves)
  c.eval.tta = False  # final evaluation / predict: softmax averaged over 7 shifted and
  # zoomed views (data.preprocess.TTA_VIEWS); validation stays plain
  return c


def parse_arg(arg: str, path: str, allowed: tuple[str, ...] = ('runlocal', 'bf16')) -> set[str]:
  """The comma-separated args of `--config PATH:arg`; an arg not in `allowed` is a ValueError."""
  args = set(filter(None, arg.split(',')))
  unknown = args - set(allowed)
  if unknown:
    known = ' and/or '.join(allowed) if allowed else 'none (no arg)'
    raise ValueError(f'{path}: unknown arg(s) {sorted(unknown)}; known args: {known}.')
  return args


def weights_dir(arch: str) -> str:
  """Where `python -m launch.convert --arch ARCH ... --out` puts converted weights by default."""
  root = os.environ.get('JAXCXR_WEIGHTS_DIR', '~/.cache/jaxcxr/weights')
  return os.path.join(os.path.expanduser(root), arch)


def fine_tune_config(arch: str, args: set[str]) -> ml_collections.ConfigDict:
  """The fine-tuning recipe of the torchvision models (configs/densenet201.py explains it)."""
  c = get_base_config()
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
  c.early_stopping.patience = 5
  c.checkpoint.every_steps = 500
  c.eval.batch_size = 64
  if 'runlocal' in args:
    shrink_for_cpu(c)
    c.model.name = RUNLOCAL_STANDIN.get(arch, arch)
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> None:
  """A CPU smoke run: phantom data, 32 px, random init, one short epoch (about a minute)."""
  c.model.pretrained = ''
  c.model.dtype = 'float32'
  c.data.source = 'phantom'
  c.data.image_size = 32
  c.data.stored_size = 0
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
