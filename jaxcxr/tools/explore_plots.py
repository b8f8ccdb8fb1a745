"""Presentation of the data exploration report: figures (matplotlib object API) and explore.md.

Each figure function draws one PNG from plain numbers and uint8 arrays prepared by
`jaxcxr.tools.explore`: class counts per split and per training epoch, image grids (samples,
augmentation preview, duplicate groups), intensity histograms and the nearest-neighbour
perceptual-hash distances. `markdown`
renders the report dict (explore.json) as explore.md with the figures embedded.
"""

from collections.abc import Sequence

import numpy as np

from jaxcxr.evaluation import plots as report_plots

DPI = 110
SPLIT_COLOURS = {'train': '#4c72b0', 'validation': '#dd8452', 'test': '#55a868'}
CLASS_COLOURS = ('#c44e52', '#4c72b0', '#55a868', '#8172b3', '#937860', '#da8bc3')


def _save(fig, path: str) -> None:
  fig.savefig(path, dpi=DPI)  # constrained layout fits the figure (plots._save says why not tight)


def _bars(
  ax,
  class_names: Sequence[str],
  series: dict[str, Sequence[int]],
  colours: dict[str, str],
  *,
  inside: bool = False,
) -> None:
  """Grouped bars (one group per class, one bar per series) with the count on each bar.

  `inside` writes the counts in the middle of the bars (clear of a reference line at the top).
  """
  x = np.arange(len(class_names))
  width = 0.8 / max(1, len(series))
  top = max([max(v) for v in series.values() if len(v)] + [1])
  for j, (label, values) in enumerate(series.items()):
    pos = x - 0.4 + width * (j + 0.5)
    bars = ax.bar(pos, values, width, label=label, color=colours.get(label))
    labels = [f'{int(v):,}' for v in values]
    if inside:
      ax.bar_label(
        bars, labels=labels, label_type='center', fontsize=8, color='white', fontweight='bold'
      )
    else:
      ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
  ax.set_xticks(x, list(class_names))
  ax.set_ylim(0, top * 1.15)
  ax.set_xlabel('class')
  ax.legend(fontsize=8)


def counts(
  class_names: Sequence[str],
  split_counts: dict[str, Sequence[int]],
  draws: dict[str, Sequence[int]],
  path: str,
  *,
  batch_size: int,
) -> None:
  """Left: records per class and split. Right: one training epoch drawn by the real loader.

  Args:
    class_names: K names.
    split_counts: split -> K record counts.
    draws: sampling mode ('none', 'oversample') -> K labels counted in one loader epoch.
    path: PNG path.
    batch_size: the loader's batch size (in the title).
  """
  fig = report_plots.new_figure(figsize=(6 + 2.2 * len(class_names), 4.3), layout='constrained')
  ax_split, ax_epoch = fig.subplots(1, 2)
  _bars(ax_split, class_names, split_counts, SPLIT_COLOURS)
  ax_split.set_ylabel('records')
  ax_split.set_title('Records per class and split (after prepare)')
  modes = {f'sampling={m}': v for m, v in draws.items()}
  _bars(
    ax_epoch,
    class_names,
    modes,
    {'sampling=none': '#8c8c8c', 'sampling=oversample': '#4c72b0'},
    inside=True,
  )
  n = int(sum(next(iter(draws.values()), [0])))
  ax_epoch.axhline(
    n / len(class_names),
    ls='--',
    lw=1,
    color='k',
    zorder=1,
    label=f'balanced ({n / len(class_names):,.0f} per class)',
  )
  ax_epoch.legend(fontsize=8)
  ax_epoch.set_ylabel('images drawn in one epoch')
  ax_epoch.set_title(f'Train: one loader epoch ({n:,} draws, batch {batch_size})')
  fig.suptitle('Class counts before and after oversampling')
  _save(fig, path)


def image_rows(
  rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
  path: str,
  *,
  title: str,
  col_titles: Sequence[str] | None = None,
  cell: float = 1.6,
) -> None:
  """A grid of grey images: one row per (row title, [(uint8 (H, W[, 1]), caption), ...]).

  Row titles are drawn as y labels (class names); empty cells are left blank.
  """
  ncols = max([len(r) for _, r in rows] + [1])
  fig = report_plots.new_figure(
    figsize=(cell * ncols + 1.2, (cell + 0.35) * len(rows) + 0.6), layout='constrained'
  )
  axes = np.asarray(fig.subplots(len(rows), ncols, squeeze=False))
  for r, (row_title, cells) in enumerate(rows):
    for c in range(ncols):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(cells):
        ax.axis('off')
        continue
      image, caption = cells[c]
      image = np.asarray(image)
      if image.ndim == 3:
        image = image[..., 0]
      ax.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
      ax.set_title(caption, fontsize=7)
      if r == 0 and col_titles and c < len(col_titles) and col_titles[c]:
        ax.set_title(f'{col_titles[c]}\n{caption}' if caption else col_titles[c], fontsize=7)
    axes[r, 0].set_ylabel(row_title, fontsize=10, fontweight='bold')
  fig.suptitle(title)
  _save(fig, path)


def intensity(
  class_names: Sequence[str],
  hists: np.ndarray,
  image_means: Sequence[np.ndarray],
  path: str,
  *,
  what: str,
) -> None:
  """Left: grey-level histogram per class (mean of per-image normalised histograms, log scale).

  Right: distribution of the per-image mean grey level per class (exposure differences between
  classes are a shortcut a model can learn).
  """
  fig = report_plots.new_figure(figsize=(12, 4.3), layout='constrained')
  ax_h, ax_m = fig.subplots(1, 2)
  levels = np.arange(256)
  for k, name in enumerate(class_names):
    colour = CLASS_COLOURS[k % len(CLASS_COLOURS)]
    ax_h.plot(
      levels,
      np.where(hists[k] > 0, hists[k], np.nan),
      color=colour,
      lw=1.2,
      label=f'{name} ({len(image_means[k]):,} images)',
    )
    if len(image_means[k]):
      ax_m.hist(
        image_means[k],
        bins=np.linspace(0, 255, 52),
        histtype='step',
        lw=1.5,
        color=colour,
        density=True,
        label=f'{name} (mean {np.mean(image_means[k]):.1f})',
      )
  ax_h.set_yscale('log')
  ax_h.set_xlim(0, 255)
  ax_h.set_xlabel('grey level (0 = black, 255 = white)')
  ax_h.set_ylabel('fraction of pixels (log; gaps = none)')
  ax_h.set_title(f'Grey-level histogram per class ({what})')
  ax_h.legend(fontsize=8)
  ax_m.set_xlim(0, 255)
  ax_m.set_xlabel('mean grey level of an image')
  ax_m.set_ylabel('density (images)')
  ax_m.set_title('Per-image mean grey level per class')
  ax_m.legend(fontsize=8)
  fig.suptitle('Intensity per class')
  _save(fig, path)


def nearest_distances(nearest: np.ndarray, threshold: int, bits: int, path: str) -> None:
  """Histogram of each image's Hamming distance to its closest other image, threshold marked."""
  fig = report_plots.new_figure(figsize=(7.5, 4), layout='constrained')
  ax = fig.subplots()
  nearest = np.asarray(nearest)
  hi = int(max(nearest.max(initial=0), threshold)) + 2
  ax.hist(nearest, bins=np.arange(0, hi + 1) - 0.5, color='#4c72b0')
  ax.axvline(
    threshold + 0.5,
    color='#c44e52',
    ls='--',
    label=f'threshold: <= {threshold} bits = near-duplicate',
  )
  below = int((nearest <= threshold).sum())
  ax.set_xlabel(f'Hamming distance to the nearest other image (of {bits} hash bits)')
  ax.set_ylabel('images')
  ax.set_title(
    f'Perceptual-hash nearest neighbours: {below:,} of {len(nearest):,} images '
    'within the threshold',
    fontsize=10,
  )
  ax.legend(fontsize=8)
  _save(fig, path)


# ----------------------------------------------------------------------------- explore.md

MAX_GROUPS_LISTED = 200


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  def cell(v):
    return f'{v:,}' if isinstance(v, int) and not isinstance(v, bool) else str(v)

  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(cell(v).replace('|', '\\|') for v in r) + ' |' for r in rows]


def _figure(report: dict, name: str, alt: str) -> list[str]:
  return [f'![{alt}]({name})', ''] if name in report['figures'] else []


def markdown(report: dict) -> str:
  """explore.md for a report dict (the content of explore.json); figures by relative path."""
  ds, ep, dup = report['dataset'], report['epoch'], report['duplicates']
  names = ds['class_names']
  splits = list(report['split_counts'])
  md = [
    f'# Data exploration: {ds["name"]} / {ds["builder_config"]}',
    '',
    f'Dataset `{ds["dataset_dir"]}` (stored {ds["stored_size"]} px, model input '
    f'{ds["image_size"]} px). Inspected: {report["dataset"]["inspected"]} in '
    f'`{ds["inspected_root"]}`. Split settings: {ds["settings"]}.',
    '',
    '## Class counts',
    '',
  ]
  rows = []
  for c in names:
    per = [report['split_counts'][s][c] for s in splits]
    rows.append([c, *per, sum(per), report['inspected_per_class'][c]])
  tot = [report['num_examples'][s] for s in splits]
  rows.append(['total', *tot, sum(tot), sum(report['inspected_per_class'].values())])
  md += _table(['class', *splits, 'total', f'{ds["inspected"]} inspected'], rows) + ['']
  p = report['prepare']
  md += [
    f'Prepare found {p["files_found"]} files; dropped {p["exact_copies_dropped"]} exact '
    f'copies, {sum(len(g) for g in p["label_conflicts"])} files in label conflicts and '
    f'skipped {len(p["skipped"])} unusable files.',
    '',
  ]
  md += [
    '## One training epoch as the loader draws it',
    '',
    f"Labels of the loader's first {ep['num_draws']:,} training draws (one epoch, batch "
    f'{ep["batch_size"]}, seed {ep["seed"]}) from `loader.train_iterator`; distinct = '
    'different records among them. Loader labels equal `sampling.epoch_indices`: '
    f'{ep["matches_sampling"]}.',
    '',
  ]
  rows = []
  for c in names:
    rows.append(
      [
        c,
        report['split_counts']['train'][c],
        ep['none'][c],
        ep['oversample'][c],
        f'{ep["oversample"][c] / max(1, ep["num_draws"]):.3f}',
        ep['oversample_distinct'][c],
      ]
    )
  md += _table(
    [
      'class',
      'train records',
      'sampling=none',
      'sampling=oversample',
      'oversample share',
      'oversample distinct',
    ],
    rows,
  ) + ['']
  md += _figure(report, 'counts.png', 'class counts')
  md += ['## Samples', ''] + _figure(report, 'samples.png', 'samples per class')
  a = report['augmentation']
  md += [
    '## Augmentation',
    '',
    f'Train transform as the loader maps it (enabled={a["enabled"]}): rotation '
    f'+-{a["rotation_deg"]} deg, zoom {a["zoom"]}, translate +-{a["translate"]}, brightness '
    f'+-{a["brightness"]}, contrast +-{a["contrast"]}, hflip {a["hflip"]}; stored '
    f'{a["stored_size"]} px -> {a["image_size"]} px. Columns: the stored record, the eval '
    'input, then independent train draws.',
    '',
  ]
  md += _figure(report, 'augmentation.png', 'augmentation preview')
  md += ['## Intensity', '']
  rows = [
    [
      c,
      v['images'],
      v['pixel_mean'],
      v['pixel_std'],
      v['image_mean_std'],
      v['pct_black'],
      v['pct_white'],
    ]
    for c, v in report['intensity'].items()
  ]
  md += [
    'Grey levels 0-255; histograms are averaged per image, so the mean is also the mean of '
    'the per-image means.',
    '',
  ]
  md += _table(
    [
      'class',
      'images',
      'mean',
      'pixel std',
      'std of image means',
      '% pixels = 0',
      '% pixels = 255',
    ],
    rows,
  ) + ['']
  md += _figure(report, 'intensity.png', 'intensity histograms')
  md += [
    '## Image sizes and modes',
    '',
    f'Modes: {report["modes"]}. Distinct sizes: {len(report["sizes"])}.',
    '',
  ]
  md += _table(
    ['class', 'format', 'mode', 'size (WxH)', 'images'],
    [[r['class'], r['format'], r['mode'], r['size'], r['count']] for r in report['sizes_modes']],
  ) + ['']
  if report['unusable']:
    md += (
      ['Unusable files:', '']
      + [f'- `{u["file"]}`: {u["reason"]}' for u in report['unusable']]
      + ['']
    )
  md += [
    '## Duplicates and near-duplicates',
    '',
    f'Exact: equal decoded pixels (`images.content_hash`). Near: {dup["hash"]} '
    f'({dup["hash_bits"]} bits) within {dup["threshold_bits"]} bits, linked transitively. '
    f'{dup["num_groups"]} groups ({dup["exact_groups"]} exact, {dup["near_groups"]} near) '
    f'with {dup["images_in_groups"]} images; {dup["cross_split_groups"]} span several '
    f'splits, {dup["cross_class_groups"]} several classes. Nearest-neighbour distance: '
    f'{dup["nearest_distance"]}.',
    '',
  ]
  md += _figure(report, 'duplicates.png', 'nearest-neighbour hash distances')
  md += _figure(report, 'duplicate_groups.png', 'duplicate groups')
  if not dup['groups']:
    md += ['No duplicate groups found.']
  for n, g in enumerate(dup['groups'][:MAX_GROUPS_LISTED], 1):
    flags = [
      f for f, on in (('cross-split', g['cross_split']), ('cross-class', g['cross_class'])) if on
    ]
    md += [
      f'{n}. **{g["kind"]}**{" (" + ", ".join(flags) + ")" if flags else ""}: '
      + '; '.join(
        f'`{m["file"]}` ({m["split"]}, d={m["distance"]}{", " + m["note"] if m["note"] else ""})'
        for m in g['members']
      )
    ]
  if len(dup['groups']) > MAX_GROUPS_LISTED:
    md += [f'... and {len(dup["groups"]) - MAX_GROUPS_LISTED} more groups in explore.json.']
  pairs = dup.get('closest_pairs_outside_groups', [])
  if pairs:
    md += [
      '',
      '### Closest pairs outside the groups',
      '',
      'The nearest images that the threshold did NOT link: look at them to judge whether the '
      'threshold should move.',
      '',
    ]
    md += _table(
      ['distance (bits)', 'image 1', 'image 2'],
      [
        [p['distance'], *(f'`{m["file"]}` ({m["class"]}, {m["split"]})' for m in p['members'])]
        for p in pairs
      ],
    ) + ['']
    md += _figure(report, 'closest_pairs.png', 'closest pairs')
  return '\n'.join(md) + '\n'
