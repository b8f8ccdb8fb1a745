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
`jaxcxr.data.prepare` reads back and checks against the config.

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
import hashlib
import json
import os
from pathlib import Path
import shutil
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from jaxcxr import CLASS_NAMES_3, CLASS_NAMES_4
from jaxcxr.data import images as images_lib
from jaxcxr.data import lookalikes
from jaxcxr.data import phantom
from jaxcxr.data import sampling

# Accepted folder names per class (older Kaggle releases used other spellings).
FOLDER_ALIASES = {
    'COVID': ('COVID', 'COVID-19'),
    'Normal': ('Normal', 'NORMAL'),
    'Viral Pneumonia': ('Viral Pneumonia', 'Viral_Pneumonia'),
    'Lung_Opacity': ('Lung_Opacity', 'Lung Opacity'),
}

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


@dataclasses.dataclass
class _Entry:
  label: int
  path: Path
  name: str  # relative to the manual folder, posix


def _class_dir(root: Path, class_name: str) -> Optional[Path]:
  """`root`'s folder of `class_name`: an alias (FOLDER_ALIASES) spelled exactly, else the one
  subfolder whose name matches an alias case-insensitively ('covid/', 'VIRAL PNEUMONIA/'); None.

  Raises:
    ValueError: several subfolders match case-insensitively and none exactly.
  """
  aliases = FOLDER_ALIASES.get(class_name, (class_name,))
  for alias in aliases:
    if (root / alias).is_dir():
      return root / alias
  wanted = {a.lower() for a in aliases}
  found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in wanted)
  if len(found) > 1:
    raise ValueError(f"{len(found)} folders in {root} could hold the '{class_name}' images: "
                     f'{[p.name for p in found]}. Merge them into one {class_name}/ folder.')
  return found[0] if found else None


def class_folders(root: Path, class_names: tuple[str, ...]) -> dict[str, Path]:
  """The image folder (`<Class>/images/` when present, else `<Class>/`) of each class present.

  Class folders are found as `find_class_folder` finds them; absent classes are left out.
  """
  out = {}
  if not root.is_dir():
    return out
  for name in class_names:
    folder = _class_dir(root, name)
    if folder is not None:
      out[name] = folder / 'images' if (folder / 'images').is_dir() else folder
  return out


def class_files(folder: Path) -> tuple[list[Path], list[Path]]:
  """(candidate files sorted, hidden files) of a class folder; subfolders (masks/) are skipped."""
  files = sorted(p for p in folder.iterdir() if p.is_file())
  return ([p for p in files if not p.name.startswith('.')],
          [p for p in files if p.name.startswith('.')])


def find_class_folder(manual_dir: Path, class_name: str) -> Path:
  """The folder holding `class_name`'s images (`<Class>/images/` when present, else `<Class>/`).

  The class folder is an alias of FOLDER_ALIASES ('COVID' or 'COVID-19', ...) spelled exactly or,
  failing that, matched case-insensitively ('covid', 'viral pneumonia').
  """
  folder = class_folders(manual_dir, (class_name,)).get(class_name)
  if folder is not None:
    return folder
  found = sorted(p.name for p in manual_dir.iterdir() if p.is_dir()) if manual_dir.is_dir() else []
  raise FileNotFoundError(
      f"Class folder '{class_name}/' is missing in {manual_dir} (found folders: {found}). Put the "
      f"'{class_name}' images in {manual_dir / class_name}/ (or {class_name}/images/), or use a "
      "builder config without this class (--config.data.builder_config=...).")


def scan_folder(manual_dir: Path, class_names: tuple[str, ...]) -> tuple[list[_Entry], list[str]]:
  """Lists candidate files per class (sorted). Returns (entries, ignored hidden files)."""
  if not manual_dir.is_dir():
    raise FileNotFoundError(
        f'Manual data folder {manual_dir} does not exist. Download the Kaggle "COVID-19 '
        'Radiography Database", unzip it and pass its folder as config.data.manual_dir '
        '(--config.data.manual_dir=PATH).')
  entries, ignored = [], []
  for label, name in enumerate(class_names):
    folder = find_class_folder(manual_dir, name)
    files, hidden = class_files(folder)
    ignored += [p.relative_to(manual_dir).as_posix() for p in hidden]
    if not files:
      raise FileNotFoundError(
          f"Class folder {folder} contains no image files. Put the '{name}' images there, or use "
          'a builder config without this class.')
    entries += [_Entry(label, p, p.relative_to(manual_dir).as_posix()) for p in files]
  return entries, ignored


def folder_fingerprint(manual_dir: Path, class_names: tuple[str, ...]) -> dict:
  """Cheap identity of a manual folder: file count and a hash of relative names + byte sizes."""
  entries, _ = scan_folder(manual_dir, class_names)
  h = hashlib.blake2b(digest_size=8)
  for e in entries:
    h.update(f'{e.label}\0{e.name}\0{e.path.stat().st_size}\n'.encode())
  return {'num_files': len(entries), 'hash': h.hexdigest()}


def _check(entry: _Entry, settings: PrepareSettings) -> tuple[Optional[tuple], Optional[str]]:
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
  RELEASE_NOTES = {
      '1.0.0': 'Stratified deduplicated splits, uint8 grey stored at a fixed size.',
      '1.1.0': ('Look-alike films (16x16 dHash within lookalike_threshold bits) kept in one '
                'split; 1.0.0 split film by film, so near copies could sit in train and test.'),
  }
  BUILDER_CONFIGS = [
      CxrConfig(name='3class', class_names=CLASS_NAMES_3,
                description='COVID, Normal, Viral Pneumonia (as in the paper).'),
      CxrConfig(name='4class', class_names=CLASS_NAMES_4,
                description='COVID, Normal, Viral Pneumonia, Lung_Opacity.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '3class'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the Kaggle "COVID-19 Radiography Database" (tawsifurrahman/'
      'covid19-radiography-database), unzip it and pass the folder holding COVID/, Normal/, '
      'Viral Pneumonia/ [, Lung_Opacity/] as --config.data.manual_dir.')

  # TFDS looks next to `code_path` for checksums/README files we do not have; its lookup of a
  # package's path needs the `importlib_resources` backport, which is not installed. None skips it.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-name
    return None

  def __init__(self, *, settings: Optional[PrepareSettings] = None, **kwargs):
    self._settings = settings or PrepareSettings()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Chest X-rays (COVID-19 / Normal / Viral Pneumonia [/ Lung Opacity]) as 8-bit '
                     'grey, resized to a square stored size.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='bytes'),
            'label': tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
            'filename': tfds.features.Tensor(shape=(), dtype=np.str_),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    s = self._settings
    class_names = tuple(self.builder_config.class_names)
    manual_dir = Path(dl_manager.manual_dir)
    entries, ignored = scan_folder(manual_dir, class_names)
    checked = _map_threads(lambda e: _check(e, s), entries, s.num_threads,
                           'Checking images', s.progress)
    bad = [(e.name, reason) for e, (_, reason) in zip(entries, checked) if reason]
    if bad and s.on_bad_image != 'skip':
      shown = '\n'.join(f'  {manual_dir / n}: {r}' for n, r in bad[:20])
      more = f'\n  ... and {len(bad) - 20} more' if len(bad) > 20 else ''
      raise BadImagesError(
          f'{len(bad)} unusable image file(s) in {manual_dir}:\n{shown}{more}\n'
          f'{images_lib.PREPARE_REMEDY}')
    good = [(e, h) for e, (h, _) in zip(entries, checked) if h]
    keep, duplicates, conflicts = sampling.dedupe(
        [h for _, (h, _) in good], [e.label for e, _ in good], [e.name for e, _ in good])
    kept = [e for (e, _), k in zip(good, keep) if k]
    groups = self._lookalike_groups(good, keep)
    assign = sampling.stratified_split([e.label for e in kept], [e.name for e in kept],
                                       val_fraction=s.val_fraction, test_fraction=s.test_fraction,
                                       seed=s.split_seed, groups=groups)
    by_split = {split: [e for e, a in zip(kept, assign) if a == split] for split in sampling.SPLITS}
    counts = {split: np.bincount([e.label for e in es], minlength=len(class_names)).tolist()
              for split, es in by_split.items()}
    self.info.metadata.update({
        'class_names': list(class_names),
        'settings': content_settings(s),
        'options': {'on_bad_image': s.on_bad_image, 'max_image_pixels': int(s.max_image_pixels)},
        'source_fingerprint': folder_fingerprint(manual_dir, class_names),
        'class_counts': counts,
        'num_files_found': len(entries),
        'skipped': [{'file': n, 'reason': r} for n, r in bad],
        'ignored_hidden_files': ignored,
        'duplicates': duplicates,
        'label_conflicts': conflicts,
        'lookalikes': lookalikes.describe(groups, [e.name for e in kept],
                                          [class_names[e.label] for e in kept],
                                          s.lookalike_threshold),
    })
    if s.previous_version:
      moved, total = _moved_films(Path(s.previous_version), by_split)
      if moved:
        raise SplitsChangedError(moved, total)
    marker = manual_dir / 'PHANTOM.json'
    if marker.exists():
      self.info.metadata['phantom'] = json.loads(marker.read_text())
    return {split: self._generate_examples(es) for split, es in by_split.items() if es}

  def _lookalike_groups(self, good: list[tuple[_Entry, tuple]],
                        keep: np.ndarray) -> list[list[int]]:
    """Look-alike groups of the kept files (indices into them), found among all usable files.

    Grouping runs before exact copies are dropped (as in `launch.explore`), so a film and a near
    copy of its dropped exact copy still share a group.
    """
    s = self._settings
    if s.lookalike_threshold < 0 or len(good) < 2:
      return []
    hashes = np.stack([p for _, (_, p) in good])
    groups, _, _ = lookalikes.near_duplicates(hashes, [c for _, (c, _) in good],
                                              s.lookalike_threshold, progress=s.progress)
    return lookalikes.restrict(groups, np.asarray(keep, bool))

  def _generate_examples(self, entries: list[_Entry]) -> Iterator[tuple[str, dict]]:
    s = self._settings

    def load(e: _Entry) -> np.ndarray:
      img = images_lib.load_grey(e.path, max_pixels=s.max_image_pixels,
                                 remedy=images_lib.PREPARE_REMEDY)
      return images_lib.resize_grey(img, s.stored_size)

    n_threads = s.num_threads or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
      for start in range(0, len(entries), 256):  # bounded memory
        chunk = entries[start:start + 256]
        for e, img in zip(chunk, pool.map(load, chunk)):
          yield e.name, {'image': img, 'label': e.label, 'filename': e.name}


class CxrPhantom(CovidRadiography, skip_registration=True):
  """The same builder over a generated phantom folder (own name: never collides with real data)."""

  name = 'cxr_phantom'
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Generated by jaxcxr.data.phantom.write_folder.'


def _moved_films(previous: Path, by_split: dict[str, list[_Entry]]) -> tuple[int, int]:
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
  return {'split_seed': int(s.split_seed), 'val_fraction': float(s.val_fraction),
          'test_fraction': float(s.test_fraction), 'stored_size': int(s.stored_size),
          'lookalike_threshold': int(s.lookalike_threshold)}


BUILDERS = {'folder': CovidRadiography, 'phantom': CxrPhantom}
CONFIG_NAMES = tuple(c.name for c in CovidRadiography.BUILDER_CONFIGS)


def class_names_for(config_name: str) -> tuple[str, ...]:
  """Class names of a builder config; unknown names raise ValueError listing the known ones."""
  for c in CovidRadiography.BUILDER_CONFIGS:
    if c.name == config_name:
      return tuple(c.class_names)
  raise ValueError(f'Unknown builder config {config_name!r} (config.data.builder_config / '
                   f'--config.data.builder_config); known configs: {list(CONFIG_NAMES)}.')


# ----------------------------------------------------------------------------- prepare / handle

DEFAULT_DATA_DIR = '~/.cache/jaxcxr/tfds'
_LOCK_NAME = '.jaxcxr_prepare.lock'


def resolve_data_dir(data_dir: str = '') -> Path:
  """`data_dir`, else $JAXCXR_DATA_DIR, else ~/.cache/jaxcxr/tfds (absolute)."""
  d = data_dir or os.environ.get('JAXCXR_DATA_DIR') or DEFAULT_DATA_DIR
  return Path(d).expanduser().resolve()


@dataclasses.dataclass
class DatasetHandle:
  """A prepared dataset: counts from its metadata and random-access sources per split.

  Attributes:
    name: TFDS builder name ('covid19_radiography' or 'cxr_phantom').
    builder_config: '3class' or '4class'.
    class_names: label i is class_names[i].
    num_examples: split -> number of records ('train', 'validation', 'test'; 0 if empty).
    class_counts: split -> per-class record counts.
    data_dir: the TFDS data_dir root.
    dataset_dir: the prepared version folder (dataset_info.json, *.array_record*).
    stored_size: side of the stored square images.
    metadata: the full metadata (settings, skipped files, duplicates, label conflicts, ...).
    phantom_dir: the generated Kaggle-layout folder with lesion masks (phantom data only).
  """
  name: str
  builder_config: str
  class_names: tuple[str, ...]
  num_examples: dict[str, int]
  class_counts: dict[str, list[int]]
  data_dir: str
  dataset_dir: str
  stored_size: int
  metadata: dict
  phantom_dir: Optional[str] = None
  _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_cache'] = {}
    return state

  def _builder(self):
    if 'builder' not in self._cache:
      self._cache['builder'] = tfds.builder_from_directory(self.dataset_dir)
    return self._cache['builder']

  def _check_split(self, split: str) -> None:
    if split not in self.num_examples:
      raise ValueError(f'Unknown split {split!r}; expected one of {list(self.num_examples)}.')
    if not self.num_examples[split]:
      raise ValueError(f'Split {split!r} of {self.dataset_dir} is empty (its fraction was 0 or '
                       'the classes are too small); prepare with a non-zero fraction.')

  def source(self, split: str):
    """Random-access source of `split`: len() and [i] -> {'image', 'label', 'filename'} numpy."""
    self._check_split(split)
    key = ('source', split)
    if key not in self._cache:
      self._cache[key] = self._builder().as_data_source(split)
    return self._cache[key]

  def raw_source(self, split: str):
    """Like `source`, but [i] returns the serialized record bytes (a tf.train.Example)."""
    self._check_split(split)
    key = ('raw', split)
    if key not in self._cache:
      self._cache[key] = self._builder().as_data_source(
          split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return self._cache[key]

  def _index(self, split: str) -> tuple[np.ndarray, list[str]]:
    self._check_split(split)
    key = ('index', split)
    if key not in self._cache:
      src = self._builder().as_data_source(
          split, decoders={'image': tfds.decode.SkipDecoding()})
      labels, names = [], []
      for start in range(0, len(src), 1024):
        for r in src.__getitems__(list(range(start, min(len(src), start + 1024)))):
          labels.append(int(r['label']))
          f = r['filename']
          names.append(f.decode() if isinstance(f, bytes) else str(f))
      self._cache[key] = (np.asarray(labels, np.int64), names)
    return self._cache[key]

  def labels(self, split: str) -> np.ndarray:
    """int64 (num_examples[split],): the label of each record, in source order."""
    return self._index(split)[0]

  def filenames(self, split: str) -> list[str]:
    """The filename (relative to the source folder) of each record, in source order."""
    return self._index(split)[1]


class _FileLock:
  """Exclusive advisory lock on a file (serialises prepares sharing a data_dir)."""

  def __init__(self, path: Path):
    self._path = path
    self._fd = None

  def __enter__(self):
    import fcntl  # pylint: disable=g-import-not-at-top
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(self._fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    import fcntl  # pylint: disable=g-import-not-at-top
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)


def validate_data_config(data_cfg) -> None:
  """Raises ValueError naming the offending `config.data` values and the fix."""
  class_names_for(data_cfg.builder_config)
  if data_cfg.source not in BUILDERS:
    raise ValueError(f'config.data.source={data_cfg.source!r}; expected one of {list(BUILDERS)}.')
  v, t = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
  if v < 0 or t < 0 or v + t >= 1:
    raise ValueError(f'config.data.val_fraction={v} and test_fraction={t} must be >= 0 and sum '
                     'to < 1 (the rest is train).')
  if data_cfg.on_bad_image not in ('error', 'skip'):
    raise ValueError(f"config.data.on_bad_image={data_cfg.on_bad_image!r}; expected 'error' or "
                     "'skip'.")
  if int(data_cfg.image_size) <= 0 or int(data_cfg.stored_size) < 0:
    raise ValueError(f'config.data.image_size={data_cfg.image_size} must be > 0 and '
                     f'stored_size={data_cfg.stored_size} >= 0 (0 = automatic: '
                     f'max(image_size, {DEFAULT_STORED_SIZE}) for a folder, image_size for '
                     'phantoms).')
  threshold = int(data_cfg.get('lookalike_threshold', lookalikes.DEFAULT_THRESHOLD))
  if not -1 <= threshold <= lookalikes.HASH_BITS:
    raise ValueError(f'config.data.lookalike_threshold={threshold}; expected -1 (no grouping) to '
                     f'{lookalikes.HASH_BITS} bits (default {lookalikes.DEFAULT_THRESHOLD}).')
  if data_cfg.source == 'phantom' and int(data_cfg.phantom.num_per_class) < 3:
    raise ValueError(f'config.data.phantom.num_per_class={data_cfg.phantom.num_per_class}; need '
                     '>= 3 so every split gets examples.')


def stored_size(data_cfg) -> int:
  """The stored image side for a data config: `stored_size` when set (> 0), else automatic.

  Automatic (`stored_size=0`): a folder is stored at max(image_size, DEFAULT_STORED_SIZE), so a new
  `image_size` up to 224 needs no re-preparation; phantom data is stored at `image_size` (it is
  generated, and every phantom setting gets its own prepared dataset). A pure function of the
  config, so training, inference and export agree without opening the dataset.
  """
  explicit = int(data_cfg.stored_size)
  if explicit:
    return explicit
  if data_cfg.source == 'phantom':
    return int(data_cfg.image_size)
  return max(int(data_cfg.image_size), DEFAULT_STORED_SIZE)


def settings_from_config(data_cfg, *, progress: bool = True) -> PrepareSettings:
  return PrepareSettings(
      split_seed=int(data_cfg.split_seed), val_fraction=float(data_cfg.val_fraction),
      test_fraction=float(data_cfg.test_fraction), stored_size=stored_size(data_cfg),
      on_bad_image=str(data_cfg.on_bad_image),
      max_image_pixels=int(data_cfg.get('max_image_pixels', images_lib.DEFAULT_MAX_PIXELS)),
      lookalike_threshold=int(data_cfg.get('lookalike_threshold', lookalikes.DEFAULT_THRESHOLD)),
      progress=progress)


def prepare_command(data_cfg, data_dir: Path) -> str:
  """The launch.prepare_data command that re-prepares `data_cfg` (with --overwrite).

  Every setting that decides the prepared content is spelled out as a `--config.data.*` flag, so
  the command prepares the same dataset whichever config file it starts from.
  """
  settings = {'data_dir': data_dir, 'source': data_cfg.source,
              'builder_config': data_cfg.builder_config}
  if data_cfg.source == 'phantom':
    settings.update({f'phantom.{k}': data_cfg.phantom[k]
                     for k in ('num_per_class', 'image_size', 'seed')})
  else:
    settings['manual_dir'] = f"'{data_cfg.manual_dir or '<Kaggle folder>'}'"
  settings.update(split_seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction,
                  test_fraction=data_cfg.test_fraction, stored_size=stored_size(data_cfg),
                  on_bad_image=data_cfg.on_bad_image)
  if 'lookalike_threshold' in data_cfg:  # configs without the key prepare with the default
    settings['lookalike_threshold'] = data_cfg.lookalike_threshold
  return ' '.join(['python -m launch.prepare_data --config configs/default.py',
                   *(f'--config.data.{k}={v}' for k, v in settings.items()), '--overwrite'])


def _mismatches(meta: dict, expected: dict) -> list[str]:
  out = []
  for key, want in expected.items():
    have = meta.get(key)
    if isinstance(want, dict) and isinstance(have, dict):
      out += [f'{key}.{k}: prepared {have.get(k)!r}, requested {v!r}'
              for k, v in want.items() if have.get(k) != v]
    elif have != want:
      out.append(f'{key}: prepared {have!r}, requested {want!r}')
  return out


def _reuse_hint(meta: dict, expected: dict, data_cfg) -> str:
  """When only the stored side differs and it can serve image_size, say how to reuse the data."""
  have = (meta.get('settings') or {}).get('stored_size')
  want = expected['settings']['stored_size']
  others = {k: v for k, v in expected['settings'].items() if k != 'stored_size'}
  same_otherwise = (all((meta.get('settings') or {}).get(k) == v for k, v in others.items()) and
                    all(meta.get(k) == v for k, v in expected.items() if k != 'settings'))
  if not same_otherwise or not isinstance(have, int) or have == want:
    return ''
  if have < int(data_cfg.image_size):
    return (f'\n(The prepared images are {have} px, smaller than image_size='
            f'{data_cfg.image_size}: re-prepare at a larger stored_size.)')
  return (f'\nThe prepared {have} px images can serve image_size={data_cfg.image_size} (the '
          f'loader resamples them): add --config.data.stored_size={have} to reuse them.')


def _phantom_dir(data_dir: Path, data_cfg, class_names) -> Path:
  p = data_cfg.phantom
  return (data_dir / 'phantom_src' /
          f'{data_cfg.builder_config}_n{p.num_per_class}_s{p.image_size}_seed{p.seed}'
          f'_v{phantom.PHANTOM_VERSION}')


def _source_folder(data_cfg, data_dir: Path, class_names) -> tuple[Optional[Path], dict]:
  """The Kaggle-layout folder to prepare from (phantoms are generated into one first).

  Returns:
    (folder or None when `manual_dir` is empty, the metadata that identifies it: the phantom
    parameters and/or the folder's fingerprint).
  """
  identity = {}
  if data_cfg.source == 'phantom':
    p = data_cfg.phantom
    folder = phantom.write_folder(
        _phantom_dir(data_dir, data_cfg, class_names), num_per_class=int(p.num_per_class),
        image_size=int(p.image_size), seed=int(p.seed), class_names=class_names)
    identity['phantom'] = phantom.phantom_params(p.num_per_class, p.image_size, p.seed,
                                                 class_names)
  else:
    folder = Path(data_cfg.manual_dir).expanduser().resolve() if data_cfg.manual_dir else None
  if folder is not None and folder.is_dir():
    identity['source_fingerprint'] = folder_fingerprint(folder, class_names)
  return folder, identity


def _tfds_dir(data_cfg, data_dir: Path, expected: dict) -> Path:
  """Where TFDS writes: `data_dir`; generated data gets one folder per settings (a hash), so runs
  with other phantom/split settings coexist in one data_dir instead of tripping the mismatch
  check."""
  if data_cfg.source != 'phantom':
    return data_dir
  key = hashlib.sha1(json.dumps(expected, sort_keys=True, default=str).encode()).hexdigest()
  return data_dir / 'phantom_tfds' / key[:12]


def _older_versions(dataset_dir: Path) -> list[Path]:
  """Prepared datasets of earlier builder versions beside `dataset_dir` (same name and config)."""
  try:
    here = tfds.core.Version(dataset_dir.name)
  except ValueError:
    return []
  out = []
  for d in dataset_dir.parent.glob('*') if dataset_dir.parent.is_dir() else []:
    try:
      version = tfds.core.Version(d.name)
    except ValueError:
      continue  # TFDS's incomplete.* folders
    if version < here and (d / 'dataset_info.json').exists():
      out.append((version, d))
  return [d for _, d in sorted(out)]


def _older_version_message(older: Path, dataset_dir: Path, data_cfg, data_dir: Path, *,
                           moved: Optional[SplitsChangedError] = None) -> str:
  """Why a dataset prepared by an older jaxcxr is not reused, and the command that replaces it."""
  old, new = older.name, dataset_dir.name
  if moved is None:  # no manual folder to check the new splits against the old ones
    change = ('That can move films between train, validation and test (config.data.manual_dir '
              'is empty, so this was not checked)')
  else:
    change = (f'Here {moved.moved} of {moved.total} films would not be in the split they were '
              'in')
  return (
      f'The dataset in {older} was prepared by an older jaxcxr (dataset version {old}); this '
      f'one prepares version {new}: {CovidRadiography.RELEASE_NOTES.get(new, "")} {change}, so '
      f'the old dataset is not reused: a run trained on the {old} splits could be resumed or '
      'evaluated on films it has seen. Re-prepare it (--overwrite replaces the '
      f'{old} dataset) with:\n  '
      f'{prepare_command(data_cfg, data_dir)}\nthen retrain the runs whose scores you compare, '
      'or point config.data.data_dir at another folder.')


def _open_or_build(make: Callable[[str], tfds.core.DatasetBuilder], expected: dict,
                   manual_dir: Optional[Path], *, overwrite: bool, data_cfg, data_dir: Path):
  """The builder of a prepared dataset that matches `expected`, preparing it if absent.

  Raises:
    ValueError: the prepared dataset differs from `expected` (names each mismatch and the command
      that re-prepares it), there is none and no folder to prepare it from, or only an older
      version is prepared (`overwrite` replaces it).
  """
  builder = make('')
  dataset_dir = Path(builder.data_dir)
  older = _older_versions(dataset_dir)
  if overwrite and ((dataset_dir / 'dataset_info.json').exists() or older):
    for d in [dataset_dir, *older]:
      shutil.rmtree(d, ignore_errors=True)
    older = []
    builder = make('')
  if (dataset_dir / 'dataset_info.json').exists():
    meta = dict(builder.info.metadata)
    bad = _mismatches(meta, expected)
    if bad:
      raise ValueError(
          f'The dataset in {dataset_dir} was prepared with other settings than config.data '
          f'asks for:\n  ' + '\n  '.join(bad) + _reuse_hint(meta, expected, data_cfg) +
          '\nRe-prepare it with:\n  '
          f'{prepare_command(data_cfg, data_dir)}\nor set config.data back to the prepared '
          'values, or point config.data.data_dir at another folder.')
    return builder
  if older and manual_dir is None:
    raise ValueError(_older_version_message(older[-1], dataset_dir, data_cfg, data_dir))
  if manual_dir is None:
    raise ValueError(
        f'No prepared dataset in {dataset_dir} and config.data.manual_dir is empty. Set '
        'config.data.manual_dir (--config.data.manual_dir=PATH) to the Kaggle folder, or '
        "use config.data.source='phantom'.")
  scan_folder(manual_dir, tuple(expected['class_names']))  # our messages for missing/empty
  if older:                                                   # folders, before TFDS's
    builder = make(str(older[-1]))  # re-prepared only if the films keep their splits
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  except SplitsChangedError as e:
    raise ValueError(_older_version_message(older[-1], dataset_dir, data_cfg, data_dir,
                                            moved=e)) from None
  return builder


def prepare(data_cfg, *, overwrite: bool = False, progress: bool = True) -> DatasetHandle:
  """Prepares (first call) or opens (later calls) the dataset described by `config.data`.

  Phantom data (`source='phantom'`) is generated first into `<data_dir>/phantom_src/...`. The
  TFDS dataset goes to `<data_dir>/<name>/<builder_config>/<version>` (name 'cxr_phantom' or
  'covid19_radiography', so phantom and real data never collide). Builds run under a file lock in
  `data_dir`, and TFDS writes into a temporary folder renamed at the end, so processes sharing a
  filesystem may all call `prepare`: the first builds, the others wait and reuse.

  Args:
    data_cfg: `config.data` (see configs/base.py).
    overwrite: delete and rebuild an existing dataset (needed after changing split settings),
      and delete the datasets older jaxcxr versions prepared beside it.
    progress: show a tqdm bar (on a terminal) while checking images.

  Returns:
    The DatasetHandle.

  Raises:
    ValueError: invalid config, the existing dataset was prepared with other settings (the
      message names each mismatch and the command that re-prepares it), or only by an older
      jaxcxr version (`overwrite` replaces it).
    FileNotFoundError: missing manual folder / class folder / empty class folder.
    BadImagesError: unusable files with `on_bad_image='error'`.
  """
  validate_data_config(data_cfg)
  data_dir = resolve_data_dir(data_cfg.data_dir)
  class_names = class_names_for(data_cfg.builder_config)
  settings = settings_from_config(data_cfg, progress=progress)
  cls = BUILDERS[data_cfg.source]
  expected = {'class_names': list(class_names), 'settings': content_settings(settings)}
  with _FileLock(data_dir / _LOCK_NAME):
    manual_dir, identity = _source_folder(data_cfg, data_dir, class_names)
    expected.update(identity)
    tfds_dir = _tfds_dir(data_cfg, data_dir, expected)
    make = lambda previous: cls(
        config=data_cfg.builder_config, data_dir=str(tfds_dir), file_format='array_record',
        settings=dataclasses.replace(settings, previous_version=previous))
    builder = _open_or_build(make, expected, manual_dir, overwrite=overwrite, data_cfg=data_cfg,
                             data_dir=data_dir)
  meta = dict(builder.info.metadata)
  counts = {s: list(meta['class_counts'][s]) for s in sampling.SPLITS}
  return DatasetHandle(
      name=cls.name, builder_config=data_cfg.builder_config, class_names=class_names,
      num_examples={s: int(sum(c)) for s, c in counts.items()}, class_counts=counts,
      data_dir=str(data_dir), dataset_dir=str(Path(builder.data_dir)),
      stored_size=int(meta['settings']['stored_size']), metadata=meta,
      phantom_dir=str(manual_dir) if data_cfg.source == 'phantom' else None)


def summary_table(handle: DatasetHandle) -> str:
  """Per-class, per-split counts plus skipped files, duplicates, conflicts and look-alike groups."""
  splits = sampling.SPLITS
  w = max(12, *(len(c) for c in handle.class_names))
  lines = [f'{handle.name}/{handle.builder_config} in {handle.dataset_dir}',
           f"{'class':<{w}}" + ''.join(f'{s:>12}' for s in splits) + f"{'total':>12}"]
  for i, c in enumerate(handle.class_names):
    row = [handle.class_counts[s][i] for s in splits]
    lines.append(f'{c:<{w}}' + ''.join(f'{n:>12}' for n in row) + f'{sum(row):>12}')
  tot = [handle.num_examples[s] for s in splits]
  lines.append(f"{'total':<{w}}" + ''.join(f'{n:>12}' for n in tot) + f'{sum(tot):>12}')
  m = handle.metadata
  dups = m.get('duplicates', [])
  lines.append(f"files found: {m.get('num_files_found', '?')}; skipped bad files: "
               f"{len(m.get('skipped', []))}; duplicate copies dropped: "
               f'{sum(len(g) - 1 for g in dups)} (in {len(dups)} groups); label conflicts dropped: '
               f"{sum(len(g) for g in m.get('label_conflicts', []))}; hidden files ignored: "
               f"{len(m.get('ignored_hidden_files', []))}")
  look = m.get('lookalikes') or {}
  lines.append(lookalikes.summary_line(look))
  for s in m.get('skipped', [])[:20]:
    lines.append(f"  skipped {s['file']}: {s['reason']}")
  for g in dups[:10]:
    lines.append(f'  duplicate: kept {g[0]}, dropped {", ".join(g[1:])}')
  for g in m.get('label_conflicts', [])[:10]:
    lines.append(f'  label conflict (all dropped): {", ".join(g)}')
  for g in look.get('groups', [])[:10]:
    lines.append(f'  look-alikes (one split): {", ".join(g)}')
  for g in look.get('mixed_label_groups', [])[:10]:
    lines.append(f'  look-alikes with different labels (kept, one split): {", ".join(g)}')
  return '\n'.join(lines)
