"""Defaults shared by every experiment config.

Each experiment file (`configs/<name>.py`) calls `get_base_config()` and overrides what differs, so
every key a launcher accepts exists here and `ml_collections` can lock the config (a mistyped
`--config.x.y` override is then an error that names the key).
"""

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
  """Dataset, split, sampling, augmentation and loader settings (`config.data`)."""
  d = ml_collections.ConfigDict()
  # 'phantom': synthetic chest radiographs generated on first use (no download);
  # 'folder': a Kaggle-layout folder given by `manual_dir` (prepared into TFDS on first use).
  d.source = 'phantom'
  d.manual_dir = ''            # Kaggle layout: COVID/, Normal/, Viral Pneumonia/[, Lung_Opacity/]
  d.data_dir = ''              # TFDS data_dir; '' -> $JAXCXR_DATA_DIR or ~/.cache/jaxcxr/tfds
  d.builder_config = '3class'  # '3class' (paper) or '4class' (+ Lung_Opacity)
  d.image_size = 224           # model input side, pixels
  d.split_seed = 0
  d.val_fraction = 0.15
  d.test_fraction = 0.15
  d.on_bad_image = 'error'     # 'error' or 'skip' (skips are counted and reported)
  # 'oversample': WeightedRandomSampler(1/class count, replacement=True) semantics;
  # 'none': plain shuffled epochs; 'class_weighted_loss': no resampling, loss weighted 1/count.
  d.sampling = 'oversample'
  d.num_workers = 2            # Grain worker processes (0 = in-process)
  d.prefetch = 2               # batches buffered per worker

  d.augment = ml_collections.ConfigDict()
  d.augment.enabled = True
  d.augment.rotation_deg = 10.0
  d.augment.zoom = (0.9, 1.1)       # scale range
  d.augment.translate = 0.06        # fraction of the side
  d.augment.brightness = 0.1        # +- fraction of the range
  d.augment.contrast = 0.1          # +- fraction
  d.augment.hflip = False           # chest anatomy is not left/right symmetric

  d.phantom = ml_collections.ConfigDict()
  d.phantom.num_per_class = 300
  d.phantom.image_size = 128
  d.phantom.seed = 0
  return d
