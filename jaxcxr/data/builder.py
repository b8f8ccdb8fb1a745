"""TFDS ArrayRecord builder for the Kaggle "COVID-19 Radiography Database" folder layout.

Manual folder layout (read-only)::

    <manual_dir>/COVID/[images/]*.png        masks/ and other subfolders are ignored
    <manual_dir>/Normal/[images/]*.png       a metadata .xlsx beside the folders is ignored
    <manual_dir>/Viral Pneumonia/[images/]*.png
    <manual_dir>/Lung_Opacity/[images/]*.png   (4class only)

Records (`tfds.features` only, no TensorFlow needed to build or read):
`image` uint8 (S, S) raw pixels (`Tensor(encoding='bytes')`), S = the prepare's stored size;
`label` ClassLabel (int64); `filename` the path relative to the manual folder
(e.g. `COVID/images/COVID-1.png`). Raw pixels rather than PNG or zlib because reading is the
loader's hottest step; measured per 224 px record (1 thread, CPU time): PNG decode 1.0-1.4 ms,
zlib Tensor 0.46-0.58 ms (10.9 MB / 300 images), raw bytes 0.33 ms (12.6 MB / 300: ArrayRecord
compresses its chunks anyway).

Splits `train` / `validation` / `test` are stratified per class and deterministic
(`sampling.stratified_split`); pictures whose decoded pixels are equal are kept once
(`sampling.dedupe`), so one picture never lands in two splits, and look-alike films (re-uploads,
re-encodings, resamples: 16x16 dHash within `lookalike_threshold` bits, `jaxcxr.data.lookalikes`,
the grouping `launch.explore` shows) are kept whole in one split, so they cannot flatter a test
score either. Per-split per-class counts, the duplicates, the look-alike groups, skipped bad files
and the prepare settings are stored in the dataset metadata (`metadata.json`), which
`jaxcxr.data.prepare` (`jaxcxr.data.dataset`) reads back and checks against the config. The folder
layout is found by `jaxcxr.data.folders`.

Versions: 1.0.0 split film by film (look-alikes could straddle splits); 1.1.0 keeps look-alike
groups in one split (without look-alikes, its split is 1.0.0's). A dataset prepared by 1.0.0 sits
in its own version folder and is never opened. `prepare` re-prepares the folder as 1.1.0 when
every film keeps its 1.0.0 split (checked before any record is written); otherwise, or with no
manual folder to check against, it refuses with the command that replaces it
(`launch.prepare_data ... --overwrite`), so a run trained on the old splits is not silently
resumed or evaluated on new ones.
"""

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxcxr import CLASS_NAMES_3, CLASS_NAMES_4
from jaxcxr.data import folders, lookalikes, sampling
from jaxcxr.data import images as images_lib

# A folder prepared with `stored_size=0` is stored at this side (or at `image_size` when larger),
# so experiments at any model resolution up to it reuse one prepared dataset: the loader resamples
# stored -> image_size. 224 is the Kaggle images' usual working size (299 px originals) and the
# ImageNet resolution of the fine-tuned models.
DEFAULT_STORED_SIZE = 224

_CITATION = """\
@article{chowdhury2020can, title={Can AI help in screening Viral and COVID-19 pneumonia?},
  author={Chowdhury, M. E. H. and others}, journal={IEEE Access}, volume={8},
  pages={132665--132676}, year={2020}}
@article{rahman2021exploring, title={Exploring the effect of image enhancement techniques on
  COVID-19 detection using chest X-ray images}, author={Rahman, T. and others},
  journal={Computers in Biology and Medicine}, volume={132}, pages={104319}, year={2021}}"""


@dataclasses.dataclass(eq=False)
class CxrConfig(tfds.core.BuilderConfig):
  """A class set; the label of class `class_names[i]` is i."""

  class_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
  """Everything besides the class set that decides the prepared content (stored in metadata)."""

  split_seed: int = 0
  val_fraction: float = 0.15
  test_fraction: float = 0.15
  stored_size: int = DEFAULT_STORED_SIZE
  on_bad_image: str = 'error'
  max_image_pixels: int = images_lib.DEFAULT_MAX_PIXELS
  lookalike_threshold: int = lookalikes.DEFAULT_THRESHOLD  # < 0: no grouping (film by film)
  num_threads: int = 0  # 0 -> os.cpu_count(); not part of the content
  progress: bool = True  # tqdm progress bar while checking images; not part of the content
  # A dataset an older builder version prepared from the same folder: the new splits must equal
  # its splits (else `SplitsChangedError`, before any record is written). Not part of the content.
  previous_version: str = ''


class BadImagesError(ValueError):
  """One or more unusable files in the manual folder (`on_bad_image='error'`)."""


class SplitsChangedError(ValueError):
  """This version would put films in other splits than an older version's prepared dataset."""

  def __init__(self, moved: int, total: int):
    self.moved, self.total = moved, total
    super().__init__(f'{moved} of {total} films would change split')


def _check(entry: folders.Entry, settings: PrepareSettings) -> tuple[tuple | None, str | None]:
  """((content hash, perceptual hash), None) for a usable image, (None, reason) for a bad one."""
  try:
    img = images_lib.load_grey(entry.path, max_pixels=settings.max_image_pixels)
  except images_lib.ImageError as e:
    return None, e.reason
  return (images_lib.content_hash(img), lookalikes.perceptual_hash(img)), None


def _map_threads(fn: Callable, items: list, num_threads: int, desc: str, progress: bool):
  """Ordered thread-pool map with an optional tqdm bar (decoders release the GIL).

  The bar is drawn on a terminal only (tqdm's disable=None), so logs redirected to a file do not
  fill with progress updates.
  """
  n = num_threads or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(n) as pool:
    it = pool.map(fn, items, chunksize=1)
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top

      it = tqdm.tqdm(it, total=len(items), desc=desc, unit='img', disable=None)
    return list(it)


class CovidRadiography(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Kaggle COVID-19 Radiography Database from a manual folder, as ArrayRecord."""

  name = 'covid19_radiography'
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    '1.0.0': 'Stratified deduplicated splits, uint8 grey stored at a fixed size.',
    '1.1.0': (
      'Look-alike films (16x16 dHash within lookalike_threshold bits) kept in one '
      'split; 1.0.0 split film by film, so near copies could sit in train and test.'
    ),
  }
  BUILDER_CONFIGS: ClassVar[list[CxrConfig]] = [
    CxrConfig(
      name='3class',
      class_names=CLASS_NAMES_3,
      description='COVID, Normal, Viral Pneumonia (as in the paper).',
    ),
    CxrConfig(
      name='4class',
      class_names=CLASS_NAMES_4,
      description='COVID, Normal, Viral Pneumonia, Lung_Opacity.',
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '3class'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download the Kaggle "COVID-19 Radiography Database" (tawsifurrahman/'
    'covid19-radiography-database), unzip it and pass the folder holding COVID/, Normal/, '
    'Viral Pneumonia/ [, Lung_Opacity/] as --config.data.manual_dir.'
  )

  # TFDS looks next to `code_path` for checksums/README files we do not have; its lookup of a
  # package's path needs the `importlib_resources` backport, which is not installed. None skips it.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-name
    return None

  # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"
  # before and "... downloaded and prepared to ..." after a build (tensorflow-datasets 4.9.10):
  # nothing is downloaded here and no size is known, so one line in our words replaces both.
  def _log_download_bytes(self) -> None:
    print(
      f'Preparing the {self.name} dataset ({self.builder_config.name}) in {self.data_dir}: '
      'once, later runs reuse it.',
      flush=True,
    )

  def _log_download_done(self) -> None:
    pass

  def __init__(self, *, settings: PrepareSettings | None = None, **kwargs):
    self._settings = settings or PrepareSettings()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'Chest X-rays (COVID-19 / Normal / Viral Pneumonia [/ Lung Opacity]) as 8-bit '
        'grey, resized to a square stored size.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='bytes'),
          'label': tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
          'filename': tfds.features.Tensor(shape=(), dtype=np.str_),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database',
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    s = self._settings
    class_names = tuple(self.builder_config.class_names)
    manual_dir = Path(dl_manager.manual_dir)
    entries, ignored = folders.scan_folder(manual_dir, class_names)
    checked = _map_threads(
      lambda e: _check(e, s), entries, s.num_threads, 'Checking images', s.progress
    )
    bad = [(e.name, reason) for e, (_, reason) in zip(entries, checked, strict=True) if reason]
    if bad and s.on_bad_image != 'skip':
      shown = '\n'.join(f'  {manual_dir / n}: {r}' for n, r in bad[:20])
      more = f'\n  ... and {len(bad) - 20} more' if len(bad) > 20 else ''
      raise BadImagesError(
        f'{len(bad)} unusable image file(s) in {manual_dir}:\n{shown}{more}\n'
        f'{images_lib.PREPARE_REMEDY}'
      )
    good = [(e, h) for e, (h, _) in zip(entries, checked, strict=True) if h]
    keep, duplicates, conflicts = sampling.dedupe(
      [h for _, (h, _) in good], [e.label for e, _ in good], [e.name for e, _ in good]
    )
    kept = [e for (e, _), k in zip(good, keep, strict=True) if k]
    groups = self._lookalike_groups(good, keep)
    assign = sampling.stratified_split(
      [e.label for e in kept],
      [e.name for e in kept],
      val_fraction=s.val_fraction,
      test_fraction=s.test_fraction,
      seed=s.split_seed,
      groups=groups,
    )
    by_split = {
      split: [e for e, a in zip(kept, assign, strict=True) if a == split]
      for split in sampling.SPLITS
    }
    counts = {
      split: np.bincount([e.label for e in es], minlength=len(class_names)).tolist()
      for split, es in by_split.items()
    }
    self.info.metadata.update(
      {
        'class_names': list(class_names),
        'settings': content_settings(s),
        'options': {'on_bad_image': s.on_bad_image, 'max_image_pixels': int(s.max_image_pixels)},
        'source_fingerprint': folders.folder_fingerprint(manual_dir, class_names),
        'class_counts': counts,
        'num_files_found': len(entries),
        'skipped': [{'file': n, 'reason': r} for n, r in bad],
        'ignored_hidden_files': ignored,
        'duplicates': duplicates,
        'label_conflicts': conflicts,
        'lookalikes': lookalikes.describe(
          groups,
          [e.name for e in kept],
          [class_names[e.label] for e in kept],
          s.lookalike_threshold,
        ),
      }
    )
    if s.previous_version:
      moved, total = _moved_films(Path(s.previous_version), by_split)
      if moved:
        raise SplitsChangedError(moved, total)
    marker = manual_dir / 'PHANTOM.json'
    if marker.exists():
      self.info.metadata['phantom'] = json.loads(marker.read_text())
    return {split: self._generate_examples(es) for split, es in by_split.items() if es}

  def _lookalike_groups(
    self, good: list[tuple[folders.Entry, tuple]], keep: np.ndarray
  ) -> list[list[int]]:
    """Look-alike groups of the kept files (indices into them), found among all usable files.

    Grouping runs before exact copies are dropped (as in `launch.explore`), so a film and a near
    copy of its dropped exact copy still share a group.
    """
    s = self._settings
    if s.lookalike_threshold < 0 or len(good) < 2:
      return []
    hashes = np.stack([p for _, (_, p) in good])
    groups, _, _ = lookalikes.near_duplicates(
      hashes, [c for _, (c, _) in good], s.lookalike_threshold, progress=s.progress
    )
    return lookalikes.restrict(groups, np.asarray(keep, bool))

  def _generate_examples(self, entries: list[folders.Entry]) -> Iterator[tuple[str, dict]]:
    s = self._settings

    def load(e: folders.Entry) -> np.ndarray:
      img = images_lib.load_grey(
        e.path, max_pixels=s.max_image_pixels, remedy=images_lib.PREPARE_REMEDY
      )
      return images_lib.resize_grey(img, s.stored_size)

    n_threads = s.num_threads or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
      for start in range(0, len(entries), 256):  # bounded memory
        chunk = entries[start : start + 256]
        for e, img in zip(chunk, pool.map(load, chunk), strict=True):
          yield e.name, {'image': img, 'label': e.label, 'filename': e.name}


class CxrPhantom(CovidRadiography, skip_registration=True):
  """The same builder over a generated phantom folder (own name: never collides with real data)."""

  name = 'cxr_phantom'
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Generated by jaxcxr.data.phantom.write_folder.'


def _moved_films(previous: Path, by_split: dict[str, list[folders.Entry]]) -> tuple[int, int]:
  """(films whose split differs from the dataset in `previous`, or that only one of them has;
  films in either)."""
  builder = tfds.builder_from_directory(str(previous))
  before = {}
  for split in builder.info.splits:
    src = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
    for start in range(0, len(src), 1024):
      for r in src.__getitems__(list(range(start, min(len(src), start + 1024)))):
        f = r['filename']
        before[f.decode() if isinstance(f, bytes) else str(f)] = split
  after = {e.name: split for split, es in by_split.items() for e in es}
  names = set(before) | set(after)
  return sum(before.get(n) != after.get(n) for n in names), len(names)


def content_settings(s: PrepareSettings) -> dict:
  """The settings that decide the prepared content (compared when a dataset is reused)."""
  return {
    'split_seed': int(s.split_seed),
    'val_fraction': float(s.val_fraction),
    'test_fraction': float(s.test_fraction),
    'stored_size': int(s.stored_size),
    'lookalike_threshold': int(s.lookalike_threshold),
  }


BUILDERS = {'folder': CovidRadiography, 'phantom': CxrPhantom}
CONFIG_NAMES = tuple(c.name for c in CovidRadiography.BUILDER_CONFIGS)


def class_names_for(config_name: str) -> tuple[str, ...]:
  """Class names of a builder config; unknown names raise ValueError listing the known ones."""
  for c in CovidRadiography.BUILDER_CONFIGS:
    if c.name == config_name:
      return tuple(c.class_names)
  raise ValueError(
    f'Unknown builder config {config_name!r} (config.data.builder_config / '
    f'--config.data.builder_config); known configs: {list(CONFIG_NAMES)}.'
  )
