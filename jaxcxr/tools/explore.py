"""Data exploration report: counts, sampling, samples, augmentation, intensities, sizes, duplicates.

`explore(data_cfg, out_dir)` prepares (or opens) the dataset of `config.data` and writes
`explore.md` (figures + tables), `explore.json` (the same numbers) and the figures into `out_dir`:

- `counts.png`: records per class and split, and the labels of ONE training epoch (the loader's
  first N = num_train stream positions) counted from the real `loader.train_iterator` with
  `sampling='none'` and `'oversample'`;
- `samples.png`: sample images per class; `augmentation.png`: a few training records under several
  draws of the configured `augment.TrainAugment` (the transform the loader maps), next to the
  evaluation resize;
- `intensity.png`: grey-level histograms and per-image mean grey level per class;
- a sizes / modes table; `duplicates.png`, `duplicate_groups.png`, `closest_pairs.png`: exact and
  near-duplicate groups with their files and splits, and the closest pairs the threshold left apart.

What is inspected: for a Kaggle folder (`source='folder'` with `manual_dir`) and for phantoms (their
generated folder) every file as found, including those prepare drops (exact copies, label conflicts,
unusable files): header size/mode/format, then the pixels as `images.decode_grey` reads them. For a
dataset opened from a data_dir alone (`fill_prepared_settings`), the stored records (stored size,
8-bit grey; exact copies were already dropped by prepare). Duplicates are found by
`jaxcxr.tools.duplicates` (hashes and grouping: `jaxcxr.data.lookalikes`).
"""

import collections
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tqdm
from PIL import Image

from jaxcxr import data as data_lib
from jaxcxr.data import augment as augment_lib
from jaxcxr.data import builder, dataset, dicom, folders, loader, lookalikes, sampling
from jaxcxr.data import images as images_lib
from jaxcxr.tools import duplicates as dup_lib
from jaxcxr.tools import explore_plots

FIGURES = (
  'counts.png',
  'samples.png',
  'augmentation.png',
  'intensity.png',
  'duplicates.png',
  'duplicate_groups.png',
  'closest_pairs.png',
)


def _bar_off(progress: bool):
  """tqdm's `disable`: bars only when asked for and on a terminal (None = off when not a TTY)."""
  return None if progress else True


# ----------------------------------------------------------------------------- inventory


@dataclasses.dataclass
class Inventory:
  """Facts about every inspected image (parallel lists, one entry per image).

  Attributes:
    kind: 'files' (a Kaggle-layout folder) or 'records' (the stored records of a prepared dataset).
    root: the folder or dataset directory.
    names: file names relative to the folder (records: their `filename`).
    labels: int (n,) class index.
    formats, modes: Pillow's format and mode from the header ('stored' / 'L' for records;
      DICOM: 'DICOM' and 'MONOCHROME1 12-bit', from its allowlisted header facts).
    sizes: (width, height) as found ((0, 0) when unreadable).
    errors: '' for usable images, else why `images.decode_grey` refused it.
    content: `images.content_hash` of the decoded grey pixels ('' when unusable).
    phash: uint64 (n, 4) perceptual hashes.
    means: float (n,) mean grey level (nan when unusable).
    hist_sum: float64 (K, 256) sum of per-image normalised grey-level histograms per class.
    refs: how to reload image i (a Path, or (split, index) for records).
  """

  kind: str
  root: str
  names: list
  labels: np.ndarray
  formats: list
  modes: list
  sizes: list
  errors: list
  content: list
  phash: np.ndarray
  means: np.ndarray
  hist_sum: np.ndarray
  refs: list


def _pixel_facts(grey: np.ndarray) -> tuple[str, np.ndarray, float, np.ndarray]:
  hist = np.bincount(grey.ravel(), minlength=256) / grey.size
  return images_lib.content_hash(grey), lookalikes.perceptual_hash(grey), float(grey.mean()), hist


def _inspect_file(path: Path, max_pixels: int) -> dict:
  """Header facts and pixel facts of one file (never raises for a bad image)."""
  out = {'format': '?', 'mode': '?', 'size': (0, 0), 'error': ''}
  try:
    data = path.read_bytes()
  except OSError as e:
    return {**out, 'error': f'cannot be read ({e.strerror or e})'}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as im:  # header only: no pixels decoded
        out.update(format=im.format or '?', mode=im.mode, size=tuple(im.size))
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
    pass  # decode_grey below names the reason
  if dicom.has_preamble(data):  # Pillow has no DICOM header reader; the allowlisted facts do
    out.update(format='DICOM')
  try:
    decoded = images_lib.decode(data, name=path, max_pixels=max_pixels)
  except images_lib.ImageError as e:
    return {**out, 'error': e.reason}
  if decoded.header is not None:
    h = decoded.header
    out.update(
      format='DICOM',
      mode=f'{h["photometric"] or "?"} {h["bits_stored"]}-bit',
      size=(h['columns'], h['rows']),
    )
  return {**out, 'facts': _pixel_facts(decoded.grey)}


def _map(fn: Callable, items: list, desc: str, progress: bool) -> list:
  """Ordered thread-pool map with a tqdm bar (Pillow decodes and resizes release the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    return list(
      tqdm.tqdm(
        pool.map(fn, items), total=len(items), desc=desc, unit='img', disable=_bar_off(progress)
      )
    )


def _assemble(kind, root, names, labels, results, refs, num_classes) -> Inventory:
  n = len(names)
  words = lookalikes.HASH_BITS // 64
  inv = Inventory(
    kind=kind,
    root=str(root),
    names=list(names),
    labels=np.asarray(labels, np.int64),
    formats=[r['format'] for r in results],
    modes=[r['mode'] for r in results],
    sizes=[r['size'] for r in results],
    errors=[r['error'] for r in results],
    content=[''] * n,
    phash=np.zeros((n, words), np.uint64),
    means=np.full(n, np.nan),
    hist_sum=np.zeros((num_classes, 256)),
    refs=list(refs),
  )
  for i, r in enumerate(results):
    if 'facts' in r:
      inv.content[i], inv.phash[i], inv.means[i], hist = r['facts']
      inv.hist_sum[inv.labels[i]] += hist
  return inv


def inspect_folder(
  manual_dir, class_names, *, max_pixels: int = images_lib.DEFAULT_MAX_PIXELS, progress: bool = True
) -> Inventory:
  """Every file of a Kaggle-layout folder, as `folders.scan_folder` finds them."""
  root = Path(manual_dir)
  entries, _ = folders.scan_folder(root, tuple(class_names))
  results = _map(lambda e: _inspect_file(e.path, max_pixels), entries, 'Inspecting files', progress)
  return _assemble(
    'files',
    root,
    [e.name for e in entries],
    [e.label for e in entries],
    results,
    [e.path for e in entries],
    len(class_names),
  )


def inspect_records(handle, *, progress: bool = True) -> Inventory:
  """Every stored record of every split of a prepared dataset."""
  names, labels, refs = [], [], []
  for split in sampling.SPLITS:
    if handle.num_examples[split]:
      names += handle.filenames(split)
      labels += handle.labels(split).tolist()
      refs += [(split, i) for i in range(handle.num_examples[split])]
  sources = {s: loader.RecordSource(handle, s) for s in sampling.SPLITS if handle.num_examples[s]}
  s = handle.stored_size

  def one(ref):
    return {
      'format': 'stored',
      'mode': 'L',
      'size': (s, s),
      'error': '',
      'facts': _pixel_facts(np.asarray(sources[ref[0]][ref[1]]['image'])),
    }

  results = _map(one, refs, 'Inspecting records', progress)
  return _assemble('records', handle.dataset_dir, names, labels, results, refs, handle.num_classes)


def load_image(inv: Inventory, handle, i: int) -> np.ndarray:
  """uint8 grey (H, W) of image i of an inventory (as decoded / as stored)."""
  ref = inv.refs[i]
  if isinstance(ref, tuple):
    return np.asarray(loader.RecordSource(handle, ref[0])[ref[1]]['image'])
  return images_lib.load_grey(ref)


# ----------------------------------------------------------------------------- loader views


def epoch_draws(
  data_cfg, handle, *, mode: str, batch_size: int, seed: int, progress: bool = False
) -> dict:
  """Labels of one training epoch counted from the real `loader.train_iterator`.

  One epoch is the loader's first N = num_train stream positions (epoch 0 of
  `sampling.EpochResampleMapDataset`): ceil(N / batch_size) batches, truncated to N labels.

  Returns:
    {'mode', 'num_draws', 'counts': K label counts, 'distinct': K distinct records drawn per class,
    'matches_sampling': whether the labels equal those of `sampling.epoch_indices` (which also gives
    the distinct records, since batches carry no record index)}.
  """
  cfg = data_cfg.copy_and_resolve_references()
  cfg.sampling = mode
  cfg.num_workers = 0  # in-process: same batches (a pure function of data, config, seed, step)
  n = handle.num_examples['train']
  it = loader.train_iterator(cfg, handle, local_batch_size=batch_size, seed=seed)
  got = []
  try:
    for _ in tqdm.trange(
      math.ceil(n / batch_size),
      desc=f'Epoch draws ({mode})',
      unit='batch',
      disable=_bar_off(progress),
    ):
      got.append(np.asarray(next(it)['label']))
  finally:
    it.close()
  drawn = np.concatenate(got)[:n].astype(np.int64)
  train_labels = handle.labels('train')
  idx = sampling.epoch_indices(train_labels, handle.num_classes, mode=mode, seed=seed, epoch=0)
  distinct = [len(np.unique(idx[train_labels[idx] == k])) for k in range(handle.num_classes)]
  return {
    'mode': mode,
    'num_draws': int(n),
    'counts': np.bincount(drawn, minlength=handle.num_classes).tolist(),
    'distinct': distinct,
    'matches_sampling': bool(np.array_equal(train_labels[idx], drawn)),
  }


def augmentation_rows(data_cfg, handle, *, draws: int, seed: int, per_class: int = 1) -> list:
  """A few training records under `draws` random draws of the loader's train transform.

  The transform is the loader's own (`augment.TrainAugment` on the stored record when
  `augment.enabled`, else `augment.Resize`), given fresh generators; the evaluation column is
  `augment.Resize` (the same `images.resize_grey` as the eval iterator).

  Returns:
    [(row title, [(uint8 (S, S), caption), ...]), ...]: per record the stored image, the eval
    input and the draws.
  """
  params = augment_lib.AugmentParams.from_config(data_cfg.augment)
  size = int(data_cfg.image_size)
  train_tf = augment_lib.TrainAugment(params, size) if params.enabled else augment_lib.Resize(size)
  eval_tf = augment_lib.Resize(size)
  source = loader.RecordSource(handle, 'train')
  labels, names = handle.labels('train'), handle.filenames('train')
  rng = np.random.default_rng(seed)
  rows = []
  for k, name in enumerate(handle.class_names):
    members = np.flatnonzero(labels == k)
    for i in rng.permutation(members)[:per_class]:
      rec = source[int(i)]
      cells = [
        (rec['image'], f'stored {rec["image"].shape[1]}px'),
        (eval_tf.map(dict(rec))['image'], f'eval {size}px'),
      ]
      for d in range(draws):
        element = dict(rec)
        if params.enabled:
          out = train_tf.random_map(element, np.random.default_rng([seed, int(i), d]))
        else:
          out = train_tf.map(element)
        cells.append((out['image'], f'train draw {d + 1}'))
      rows.append((f'{name}\n{Path(names[i]).name}', cells))
  return rows


def sample_rows(
  inv: Inventory, handle, class_names, *, samples: int, seed: int, split_of: dict
) -> list:
  """`samples` random usable images per class: [(class name, [(uint8 (H, W), caption), ...])]."""
  rng = np.random.default_rng(seed)
  rows = []
  for k, name in enumerate(class_names):
    usable = [i for i in np.flatnonzero(inv.labels == k) if not inv.errors[i]]
    picked = sorted(rng.permutation(usable)[:samples].tolist(), key=lambda i: inv.names[i])
    cells = []
    for i in picked:
      w, h = inv.sizes[i]
      cells.append(
        (
          load_image(inv, handle, i),
          f'{Path(inv.names[i]).name}\n{w}x{h} {split_of.get(inv.names[i], "not used")}',
        )
      )
    rows.append((name, cells))
  return rows


# ----------------------------------------------------------------------------- tables


def split_membership(handle) -> tuple[dict, dict]:
  """(file -> split it was prepared into, file -> why prepare left it out) from the handle."""
  split_of = {}
  for split in sampling.SPLITS:
    if handle.num_examples[split]:
      split_of.update((name, split) for name in handle.filenames(split))
  meta = handle.metadata
  notes = {}
  for group in meta.get('duplicates', []):
    notes.update((d, f'exact copy of {group[0]}, dropped by prepare') for d in group[1:])
  for group in meta.get('label_conflicts', []):
    notes.update((m.rsplit(' (label ', 1)[0], 'label conflict, dropped by prepare') for m in group)
  for s in meta.get('skipped', []):
    notes[s['file']] = f'unusable, skipped: {s["reason"]}'
  return split_of, notes


def size_mode_table(inv: Inventory, class_names) -> list[dict]:
  """Rows {'class', 'format', 'mode', 'size' ('WxH'), 'count'} per distinct combination."""
  c = collections.Counter(
    (
      int(inv.labels[i]),
      inv.formats[i],
      inv.modes[i],
      f'{inv.sizes[i][0]}x{inv.sizes[i][1]}' if inv.sizes[i][0] else 'unreadable',
    )
    for i in range(len(inv.names))
  )
  rows = sorted(c.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1:]))
  return [
    {'class': class_names[k], 'format': f, 'mode': m, 'size': s, 'count': n}
    for (k, f, m, s), n in rows
  ]


def intensity_table(inv: Inventory, class_names) -> dict:
  """Per class: images, pixel mean/std (grey levels), mean/std of per-image means, % black/white."""
  out = {}
  levels = np.arange(256)
  for k, name in enumerate(class_names):
    means = inv.means[(inv.labels == k) & ~np.isnan(inv.means)]
    n = len(means)
    hist = inv.hist_sum[k] / max(n, 1)
    mu = float((hist * levels).sum())
    # Histograms are averaged per image, so pixel_mean is also the mean of the image means.
    out[name] = {
      'images': n,
      'pixel_mean': round(mu, 2),
      'pixel_std': round(float(np.sqrt((hist * (levels - mu) ** 2).sum())), 2),
      'image_mean_std': round(float(means.std()), 2) if n else None,
      'pct_black': round(100 * float(hist[0]), 3),
      'pct_white': round(100 * float(hist[255]), 3),
    }
  return out


# ----------------------------------------------------------------------------- the report


def fill_prepared_settings(data_cfg) -> None:
  """Sets `data_cfg`'s split and stored-size settings to those of the prepared real dataset.

  For exploring a data_dir without its source folder: `prepare` then opens the dataset instead of
  reporting a settings mismatch.

  Raises:
    FileNotFoundError: no prepared `builder_config` dataset in the data_dir (names the command).
  """
  data_dir = dataset.resolve_data_dir(data_cfg.data_dir)
  folder = (
    data_dir
    / builder.CovidRadiography.name
    / data_cfg.builder_config
    / str(builder.CovidRadiography.VERSION)
  )
  if not (folder / 'metadata.json').exists():
    raise FileNotFoundError(
      f'No prepared {data_cfg.builder_config} dataset in {data_dir} (looked for {folder}). '
      'Prepare it with `python -m launch.prepare_data --config <config> '
      f'--config.data.manual_dir=<Kaggle folder> --config.data.data_dir={data_dir}`, or explore '
      'the folder itself (--config.data.manual_dir=<Kaggle folder>).'
    )
  settings = json.loads((folder / 'metadata.json').read_text())['settings']
  data_cfg.source = 'folder'
  data_cfg.split_seed = int(settings['split_seed'])
  if 'lookalike_threshold' in settings and 'lookalike_threshold' in data_cfg:
    data_cfg.lookalike_threshold = int(settings['lookalike_threshold'])
  data_cfg.val_fraction = float(settings['val_fraction'])
  data_cfg.test_fraction = float(settings['test_fraction'])
  data_cfg.stored_size = int(settings['stored_size'])


def _by_class(values, class_names) -> dict:
  return {c: int(v) for c, v in zip(class_names, values, strict=True)}


def _group_rows(inv, handle, groups: list[dict], max_groups: int = 8, max_members: int = 5):
  rows = []
  for n, g in enumerate(groups[:max_groups], 1):
    flags = ', '.join(
      f for f, on in (('cross-split', g['cross_split']), ('cross-class', g['cross_class'])) if on
    )
    cells = [
      (
        load_image(inv, handle, i),
        f'{Path(m["file"]).name}\n{m["class"]} / {m["split"]}\nd = {m["distance"]}',
      )
      for i, m in zip(g['_index'], g['members'], strict=True)
    ][:max_members]
    rows.append((f'group {n}\n{g["kind"]}' + (f'\n{flags}' if flags else ''), cells))
  return rows


def inventory(data_cfg, handle, *, progress: bool = True) -> Inventory:
  """What `explore` inspects: the phantom or Kaggle folder as found, else the stored records."""
  if data_cfg.source == 'phantom':
    return inspect_folder(handle.phantom_dir, handle.class_names, progress=progress)
  if data_cfg.manual_dir:
    return inspect_folder(
      Path(data_cfg.manual_dir).expanduser(),
      handle.class_names,
      max_pixels=int(data_cfg.max_image_pixels),
      progress=progress,
    )
  return inspect_records(handle, progress=progress)


def _draw_figures(
  out: Path,
  data_cfg,
  handle,
  inv: Inventory,
  draws: dict,
  dups: dup_lib.Duplicates,
  *,
  samples: int,
  aug_draws: int,
  batch_size: int,
  seed: int,
  split_of: dict,
) -> None:
  """Writes the FIGURES that apply (duplicate figures only when there is something to show)."""
  names = handle.class_names
  usable = np.asarray([not e for e in inv.errors])
  explore_plots.counts(
    names,
    {s: handle.class_counts[s] for s in sampling.SPLITS},
    {m: d['counts'] for m, d in draws.items()},
    str(out / 'counts.png'),
    batch_size=batch_size,
  )
  explore_plots.image_rows(
    sample_rows(inv, handle, names, samples=samples, seed=seed, split_of=split_of),
    str(out / 'samples.png'),
    title=f'Sample images per class ({inv.kind} as inspected)',
  )
  explore_plots.image_rows(
    augmentation_rows(data_cfg, handle, draws=aug_draws, seed=seed),
    str(out / 'augmentation.png'),
    cell=1.5,
    title='Train augmentation draws vs evaluation preprocessing',
  )
  explore_plots.intensity(
    names,
    inv.hist_sum / np.maximum(np.bincount(inv.labels[usable], minlength=len(names)), 1)[:, None],
    [inv.means[(inv.labels == k) & usable] for k in range(len(names))],
    str(out / 'intensity.png'),
    what='files as decoded' if inv.kind == 'files' else 'stored',
  )
  nearest = dups.nearest
  if (nearest >= 0).any():
    explore_plots.nearest_distances(
      nearest[nearest >= 0], dups.threshold, lookalikes.HASH_BITS, str(out / 'duplicates.png')
    )
  if dups.groups:
    explore_plots.image_rows(
      _group_rows(inv, handle, dups.groups),
      str(out / 'duplicate_groups.png'),
      title='Duplicate groups (cross-split first; d = hash bits from the first member)',
    )
  if dups.pairs:
    explore_plots.image_rows(
      [
        (
          f'd = {p["distance"]}',
          [
            (load_image(inv, handle, i), f'{Path(m["file"]).name}\n{m["class"]} / {m["split"]}')
            for i, m in zip(p['_index'], p['members'], strict=True)
          ],
        )
        for p in dups.pairs
      ],
      str(out / 'closest_pairs.png'),
      cell=1.8,
      title=f'Closest pairs outside the groups\n(d = hash bits; near-duplicate: '
      f'<= {dups.threshold})',
    )


def _duplicates_section(dups: dup_lib.Duplicates) -> dict:
  groups, near = dups.groups, dups.nearest[dups.nearest >= 0]
  return {
    'hash': f'dHash {lookalikes.HASH_SIDE}x{lookalikes.HASH_SIDE}',
    'hash_bits': lookalikes.HASH_BITS,
    'threshold_bits': dups.threshold,
    'num_groups': len(groups),
    'exact_groups': sum(g['kind'] == 'exact' for g in groups),
    'near_groups': sum(g['kind'] == 'near' for g in groups),
    'cross_split_groups': sum(g['cross_split'] for g in groups),
    'cross_class_groups': sum(g['cross_class'] for g in groups),
    'images_in_groups': sum(len(g['members']) for g in groups),
    'nearest_distance': (
      {
        'min': int(near.min()),
        'p1': round(float(np.percentile(near, 1)), 1),
        'median': float(np.median(near)),
      }
      if len(near)
      else {}
    ),
    'groups': [{k: v for k, v in g.items() if k != '_index'} for g in groups],
    'closest_pairs_outside_groups': [
      {k: v for k, v in p.items() if k != '_index'} for p in dups.pairs
    ],
  }


def _report(
  data_cfg,
  handle,
  inv: Inventory,
  draws: dict,
  dups: dup_lib.Duplicates,
  *,
  batch_size: int,
  seed: int,
  aug_draws: int,
) -> dict:
  """The numbers of explore.json (figures listed by the caller)."""
  names = handle.class_names
  meta = handle.metadata
  aug = augment_lib.AugmentParams.from_config(data_cfg.augment)
  return {
    'dataset': {
      'name': handle.name,
      'builder_config': handle.builder_config,
      'class_names': list(names),
      'dataset_dir': handle.dataset_dir,
      'source': data_cfg.source,
      'inspected': inv.kind,
      'inspected_root': inv.root,
      'stored_size': handle.stored_size,
      'image_size': int(data_cfg.image_size),
      'settings': meta.get('settings', {}),
    },
    'split_counts': {s: _by_class(handle.class_counts[s], names) for s in sampling.SPLITS},
    'num_examples': dict(handle.num_examples),
    'inspected_per_class': _by_class(np.bincount(inv.labels, minlength=len(names)), names),
    'unusable': [{'file': n, 'reason': e} for n, e in zip(inv.names, inv.errors, strict=True) if e],
    'prepare': {
      'files_found': meta.get('num_files_found'),
      'exact_copies_dropped': sum(len(g) - 1 for g in meta.get('duplicates', [])),
      'label_conflicts': meta.get('label_conflicts', []),
      'skipped': meta.get('skipped', []),
    },
    'epoch': {
      'batch_size': batch_size,
      'seed': seed,
      'num_draws': draws['none']['num_draws'],
      **{m: _by_class(d['counts'], names) for m, d in draws.items()},
      **{f'{m}_distinct': _by_class(d['distinct'], names) for m, d in draws.items()},
      'matches_sampling': all(d['matches_sampling'] for d in draws.values()),
    },
    'augmentation': {
      **dataclasses.asdict(aug),
      'image_size': int(data_cfg.image_size),
      'stored_size': handle.stored_size,
      'draws_shown': aug_draws,
    },
    'intensity': intensity_table(inv, names),
    'sizes_modes': size_mode_table(inv, names),
    'modes': dict(collections.Counter(inv.modes).most_common()),
    'sizes': dict(collections.Counter(f'{w}x{h}' for w, h in inv.sizes).most_common()),
    'duplicates': _duplicates_section(dups),
  }


def explore(
  data_cfg,
  out_dir,
  *,
  samples: int = 8,
  aug_draws: int = 6,
  batch_size: int = 32,
  seed: int = 0,
  dup_threshold: int = dup_lib.DEFAULT_DUP_THRESHOLD,
  progress: bool = True,
) -> dict:
  """Prepares/opens the dataset of `data_cfg`, writes the report to `out_dir`, returns its numbers.

  Args:
    data_cfg: `config.data` (source, manual_dir / phantom, data_dir, image_size, augment, ...);
      a folder source without manual_dir explores the dataset prepared in data_dir with its own
      split settings (`fill_prepared_settings`).
    out_dir: created if needed; receives explore.md, explore.json and the figures.
    samples: sample images per class in samples.png.
    aug_draws: augmentation draws per record in augmentation.png.
    batch_size: loader batch size for counting the epoch draws.
    seed: the training seed the epoch draws and augmentation come from (config.seed).
    dup_threshold: largest perceptual-hash distance (bits of 256) that links two images.
    progress: tqdm bars (on a terminal).

  Returns:
    The dict written to explore.json.
  """
  if data_cfg.source == 'folder' and not data_cfg.manual_dir:
    data_cfg = data_cfg.copy_and_resolve_references()  # the caller's config stays as it was
    fill_prepared_settings(data_cfg)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  handle = data_lib.prepare(data_cfg, progress=progress)
  inv = inventory(data_cfg, handle, progress=progress)
  split_of, notes = split_membership(handle)
  draws = {
    m: epoch_draws(data_cfg, handle, mode=m, batch_size=batch_size, seed=seed, progress=progress)
    for m in ('none', 'oversample')
  }
  dups = dup_lib.find_duplicates(
    inv, handle.class_names, split_of, notes, dup_threshold, progress=progress
  )
  _draw_figures(
    out,
    data_cfg,
    handle,
    inv,
    draws,
    dups,
    samples=samples,
    aug_draws=aug_draws,
    batch_size=batch_size,
    seed=seed,
    split_of=split_of,
  )
  report = _report(
    data_cfg, handle, inv, draws, dups, batch_size=batch_size, seed=seed, aug_draws=aug_draws
  )
  report['figures'] = [f for f in FIGURES if (out / f).exists()]
  (out / 'explore.json').write_text(json.dumps(report, indent=1))
  (out / 'explore.md').write_text(explore_plots.markdown(report))
  return report


def summary_text(report: dict) -> str:
  """The few lines a terminal shows of a report: split counts, epoch draws, duplicate groups."""
  dup, epoch = report['duplicates'], report['epoch']
  lines = [f'{split:>10}: {counts}' for split, counts in report['split_counts'].items()]
  lines.append(f'epoch draws: none {epoch["none"]}, oversample {epoch["oversample"]}')
  lines.append(
    f'duplicate groups: {dup["num_groups"]} ({dup["exact_groups"]} exact, '
    f'{dup["near_groups"]} near, {dup["cross_split_groups"]} cross-split, '
    f'{dup["cross_class_groups"]} cross-class)'
  )
  return '\n'.join(lines)
