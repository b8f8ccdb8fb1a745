"""Preparing and opening the TFDS dataset a data config describes: `prepare(config.data)`.

`prepare` generates phantom data or checks the manual Kaggle folder, builds the ArrayRecord dataset
with `jaxcxr.data.builder` under a file lock (or reopens a prepared one after checking that it was
prepared with the same settings), and returns a `DatasetHandle`: per-split counts, labels,
filenames and random-access sources for the loader.
"""

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxcxr.data import builder as builder_lib
from jaxcxr.data import folders, lookalikes, phantom, sampling
from jaxcxr.data import images as images_lib

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
  phantom_dir: str | None = None
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
      raise ValueError(
        f'Split {split!r} of {self.dataset_dir} is empty (its fraction was 0 or '
        'the classes are too small); prepare with a non-zero fraction.'
      )

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
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
      )
    return self._cache[key]

  def _index(self, split: str) -> tuple[np.ndarray, list[str]]:
    self._check_split(split)
    key = ('index', split)
    if key not in self._cache:
      src = self._builder().as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
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
  builder_lib.class_names_for(data_cfg.builder_config)
  if data_cfg.source not in builder_lib.BUILDERS:
    raise ValueError(
      f'config.data.source={data_cfg.source!r}; expected one of {list(builder_lib.BUILDERS)}.'
    )
  v, t = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
  if v < 0 or t < 0 or v + t >= 1:
    raise ValueError(
      f'config.data.val_fraction={v} and test_fraction={t} must be >= 0 and sum '
      'to < 1 (the rest is train).'
    )
  if data_cfg.on_bad_image not in ('error', 'skip'):
    raise ValueError(
      f"config.data.on_bad_image={data_cfg.on_bad_image!r}; expected 'error' or 'skip'."
    )
  if int(data_cfg.image_size) <= 0 or int(data_cfg.stored_size) < 0:
    raise ValueError(
      f'config.data.image_size={data_cfg.image_size} must be > 0 and '
      f'stored_size={data_cfg.stored_size} >= 0 (0 = automatic: '
      f'max(image_size, {builder_lib.DEFAULT_STORED_SIZE}) for a folder, '
      'image_size for phantoms).'
    )
  threshold = int(data_cfg.get('lookalike_threshold', lookalikes.DEFAULT_THRESHOLD))
  if not -1 <= threshold <= lookalikes.HASH_BITS:
    raise ValueError(
      f'config.data.lookalike_threshold={threshold}; expected -1 (no grouping) to '
      f'{lookalikes.HASH_BITS} bits (default {lookalikes.DEFAULT_THRESHOLD}).'
    )
  if data_cfg.source == 'phantom' and int(data_cfg.phantom.num_per_class) < 3:
    raise ValueError(
      f'config.data.phantom.num_per_class={data_cfg.phantom.num_per_class}; need '
      '>= 3 so every split gets examples.'
    )


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
  return max(int(data_cfg.image_size), builder_lib.DEFAULT_STORED_SIZE)


def settings_from_config(data_cfg, *, progress: bool = True) -> builder_lib.PrepareSettings:
  return builder_lib.PrepareSettings(
    split_seed=int(data_cfg.split_seed),
    val_fraction=float(data_cfg.val_fraction),
    test_fraction=float(data_cfg.test_fraction),
    stored_size=stored_size(data_cfg),
    on_bad_image=str(data_cfg.on_bad_image),
    max_image_pixels=int(data_cfg.get('max_image_pixels', images_lib.DEFAULT_MAX_PIXELS)),
    lookalike_threshold=int(data_cfg.get('lookalike_threshold', lookalikes.DEFAULT_THRESHOLD)),
    progress=progress,
  )


def prepare_command(data_cfg, data_dir: Path) -> str:
  """The launch.prepare_data command that re-prepares `data_cfg` (with --overwrite).

  Every setting that decides the prepared content is spelled out as a `--config.data.*` flag, so
  the command prepares the same dataset whichever config file it starts from.
  """
  settings = {
    'data_dir': data_dir,
    'source': data_cfg.source,
    'builder_config': data_cfg.builder_config,
  }
  if data_cfg.source == 'phantom':
    settings.update(
      {f'phantom.{k}': data_cfg.phantom[k] for k in ('num_per_class', 'image_size', 'seed')}
    )
  else:
    settings['manual_dir'] = f"'{data_cfg.manual_dir or '<Kaggle folder>'}'"
  settings.update(
    split_seed=data_cfg.split_seed,
    val_fraction=data_cfg.val_fraction,
    test_fraction=data_cfg.test_fraction,
    stored_size=stored_size(data_cfg),
    on_bad_image=data_cfg.on_bad_image,
  )
  if 'lookalike_threshold' in data_cfg:  # configs without the key prepare with the default
    settings['lookalike_threshold'] = data_cfg.lookalike_threshold
  return ' '.join(
    [
      'python -m launch.prepare_data --config configs/default.py',
      *(f'--config.data.{k}={v}' for k, v in settings.items()),
      '--overwrite',
    ]
  )


def _mismatches(meta: dict, expected: dict) -> list[str]:
  out = []
  for key, want in expected.items():
    have = meta.get(key)
    if isinstance(want, dict) and isinstance(have, dict):
      out += [
        f'{key}.{k}: prepared {have.get(k)!r}, requested {v!r}'
        for k, v in want.items()
        if have.get(k) != v
      ]
    elif have != want:
      out.append(f'{key}: prepared {have!r}, requested {want!r}')
  return out


def _reuse_hint(meta: dict, expected: dict, data_cfg) -> str:
  """When only the stored side differs and it can serve image_size, say how to reuse the data."""
  have = (meta.get('settings') or {}).get('stored_size')
  want = expected['settings']['stored_size']
  others = {k: v for k, v in expected['settings'].items() if k != 'stored_size'}
  same_otherwise = all((meta.get('settings') or {}).get(k) == v for k, v in others.items()) and all(
    meta.get(k) == v for k, v in expected.items() if k != 'settings'
  )
  if not same_otherwise or not isinstance(have, int) or have == want:
    return ''
  if have < int(data_cfg.image_size):
    return (
      f'\n(The prepared images are {have} px, smaller than image_size='
      f'{data_cfg.image_size}: re-prepare at a larger stored_size.)'
    )
  return (
    f'\nThe prepared {have} px images can serve image_size={data_cfg.image_size} (the '
    f'loader resamples them): add --config.data.stored_size={have} to reuse them.'
  )


def _phantom_dir(data_dir: Path, data_cfg, class_names) -> Path:
  p = data_cfg.phantom
  return (
    data_dir
    / 'phantom_src'
    / f'{data_cfg.builder_config}_n{p.num_per_class}_s{p.image_size}_seed{p.seed}'
    f'_v{phantom.PHANTOM_VERSION}'
  )


def _source_folder(data_cfg, data_dir: Path, class_names) -> tuple[Path | None, dict]:
  """The Kaggle-layout folder to prepare from (phantoms are generated into one first).

  Returns:
    (folder or None when `manual_dir` is empty, the metadata that identifies it: the phantom
    parameters and/or the folder's fingerprint).
  """
  identity = {}
  if data_cfg.source == 'phantom':
    p = data_cfg.phantom
    folder = phantom.write_folder(
      _phantom_dir(data_dir, data_cfg, class_names),
      num_per_class=int(p.num_per_class),
      image_size=int(p.image_size),
      seed=int(p.seed),
      class_names=class_names,
    )
    identity['phantom'] = phantom.phantom_params(p.num_per_class, p.image_size, p.seed, class_names)
  else:
    folder = Path(data_cfg.manual_dir).expanduser().resolve() if data_cfg.manual_dir else None
  if folder is not None and folder.is_dir():
    identity['source_fingerprint'] = folders.folder_fingerprint(folder, class_names)
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


def _older_version_message(
  older: Path,
  dataset_dir: Path,
  data_cfg,
  data_dir: Path,
  *,
  moved: builder_lib.SplitsChangedError | None = None,
) -> str:
  """Why a dataset prepared by an older jaxcxr is not reused, and the command that replaces it."""
  old, new = older.name, dataset_dir.name
  if moved is None:  # no manual folder to check the new splits against the old ones
    change = (
      'That can move films between train, validation and test (config.data.manual_dir '
      'is empty, so this was not checked)'
    )
  else:
    change = f'Here {moved.moved} of {moved.total} films would not be in the split they were in'
  return (
    f'The dataset in {older} was prepared by an older jaxcxr (dataset version {old}); this '
    f'one prepares version {new}: '
    f'{builder_lib.CovidRadiography.RELEASE_NOTES.get(new, "")} {change}, so '
    f'the old dataset is not reused: a run trained on the {old} splits could be resumed or '
    'evaluated on films it has seen. Re-prepare it (--overwrite replaces the '
    f'{old} dataset) with:\n  '
    f'{prepare_command(data_cfg, data_dir)}\nthen retrain the runs whose scores you compare, '
    'or point config.data.data_dir at another folder.'
  )


def _open_or_build(
  make: Callable[[str], tfds.core.DatasetBuilder],
  expected: dict,
  manual_dir: Path | None,
  *,
  overwrite: bool,
  data_cfg,
  data_dir: Path,
):
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
        f'asks for:\n  '
        + '\n  '.join(bad)
        + _reuse_hint(meta, expected, data_cfg)
        + '\nRe-prepare it with:\n  '
        f'{prepare_command(data_cfg, data_dir)}\nor set config.data back to the prepared '
        'values, or point config.data.data_dir at another folder.'
      )
    return builder
  if older and manual_dir is None:
    raise ValueError(_older_version_message(older[-1], dataset_dir, data_cfg, data_dir))
  if manual_dir is None:
    raise ValueError(
      f'No prepared dataset in {dataset_dir} and config.data.manual_dir is empty. Set '
      'config.data.manual_dir (--config.data.manual_dir=PATH) to the Kaggle folder, or '
      "use config.data.source='phantom'."
    )
  # Our messages for a missing or empty class folder, before TFDS's.
  folders.scan_folder(manual_dir, tuple(expected['class_names']))
  if older:
    builder = make(str(older[-1]))  # re-prepared only if the films keep their splits
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
  except builder_lib.SplitsChangedError as e:
    raise ValueError(
      _older_version_message(older[-1], dataset_dir, data_cfg, data_dir, moved=e)
    ) from None
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
  class_names = builder_lib.class_names_for(data_cfg.builder_config)
  settings = settings_from_config(data_cfg, progress=progress)
  cls = builder_lib.BUILDERS[data_cfg.source]
  expected = {'class_names': list(class_names), 'settings': builder_lib.content_settings(settings)}
  with _FileLock(data_dir / _LOCK_NAME):
    manual_dir, identity = _source_folder(data_cfg, data_dir, class_names)
    expected.update(identity)
    tfds_dir = _tfds_dir(data_cfg, data_dir, expected)

    def make(previous):
      return cls(
        config=data_cfg.builder_config,
        data_dir=str(tfds_dir),
        file_format='array_record',
        settings=dataclasses.replace(settings, previous_version=previous),
      )

    builder = _open_or_build(
      make, expected, manual_dir, overwrite=overwrite, data_cfg=data_cfg, data_dir=data_dir
    )
  meta = dict(builder.info.metadata)
  counts = {s: list(meta['class_counts'][s]) for s in sampling.SPLITS}
  return DatasetHandle(
    name=cls.name,
    builder_config=data_cfg.builder_config,
    class_names=class_names,
    num_examples={s: int(sum(c)) for s, c in counts.items()},
    class_counts=counts,
    data_dir=str(data_dir),
    dataset_dir=str(Path(builder.data_dir)),
    stored_size=int(meta['settings']['stored_size']),
    metadata=meta,
    phantom_dir=str(manual_dir) if data_cfg.source == 'phantom' else None,
  )


def summary_table(handle: DatasetHandle) -> str:
  """Per-class, per-split counts plus skipped files, duplicates, conflicts and look-alike groups."""
  splits = sampling.SPLITS
  w = max(12, *(len(c) for c in handle.class_names))
  lines = [
    f'{handle.name}/{handle.builder_config} in {handle.dataset_dir}',
    f'{"class":<{w}}' + ''.join(f'{s:>12}' for s in splits) + f'{"total":>12}',
  ]
  for i, c in enumerate(handle.class_names):
    row = [handle.class_counts[s][i] for s in splits]
    lines.append(f'{c:<{w}}' + ''.join(f'{n:>12}' for n in row) + f'{sum(row):>12}')
  tot = [handle.num_examples[s] for s in splits]
  lines.append(f'{"total":<{w}}' + ''.join(f'{n:>12}' for n in tot) + f'{sum(tot):>12}')
  m = handle.metadata
  dups = m.get('duplicates', [])
  lines.append(
    f'files found: {m.get("num_files_found", "?")}; skipped bad files: '
    f'{len(m.get("skipped", []))}; duplicate copies dropped: '
    f'{sum(len(g) - 1 for g in dups)} (in {len(dups)} groups); label conflicts dropped: '
    f'{sum(len(g) for g in m.get("label_conflicts", []))}; hidden files ignored: '
    f'{len(m.get("ignored_hidden_files", []))}'
  )
  look = m.get('lookalikes') or {}
  lines.append(lookalikes.summary_line(look))
  for s in m.get('skipped', [])[:20]:
    lines.append(f'  skipped {s["file"]}: {s["reason"]}')
  for g in dups[:10]:
    lines.append(f'  duplicate: kept {g[0]}, dropped {", ".join(g[1:])}')
  for g in m.get('label_conflicts', [])[:10]:
    lines.append(f'  label conflict (all dropped): {", ".join(g)}')
  for g in look.get('groups', [])[:10]:
    lines.append(f'  look-alikes (one split): {", ".join(g)}')
  for g in look.get('mixed_label_groups', [])[:10]:
    lines.append(f'  look-alikes with different labels (kept, one split): {", ".join(g)}')
  return '\n'.join(lines)
