"""Grad-CAM resolution A/B on phantoms: localisation and the shortcut indicator per CAM layer.

For a workdir trained on phantom films (a Kaggle-layout folder written by `jaxcxr.data.phantom`,
so every film has a lesion mask), each Grad-CAM layer choice ('last', 'auto', 'auto+last', a stage)
is scored on one split with the same checkpoint:

- localisation of the true class's map on the films with a lesion: the pointing game (peak on the
  lesion) and the energy inside the lesion mask (share of the map's mass on it);
- the shortcut indicator on the predicted class's maps (`jaxcxr.evaluation.shortcut`): corner,
  border and off-lung shares per predicted class and what it flags.

`launch.benchmark_cam` runs it; docs/RESULTS.md has the measurements that chose 'auto'.
"""

import numpy as np

from jaxcxr import data
from jaxcxr.data import dataset, phantom
from jaxcxr.evaluation import folder_eval, gradcam, inference, shortcut
from jaxcxr.training import checkpoint


def measure_workdir(
  workdir: str,
  lesion_dir: str = '',
  *,
  layers: tuple[str, ...] = ('last', 'auto', 'auto+last'),
  split: str = 'test',
  batch_size: int = 32,
) -> dict:
  """Localisation and indicator figures of one workdir for each Grad-CAM layer choice.

  Args:
    workdir: a training workdir whose data are phantom films.
    lesion_dir: the phantom folder with `lesion_masks/` ('' = the workdir's phantom or manual dir).
    layers: Grad-CAM layer choices (`gradcam.resolve_layers`).
    split: the split scored.
    batch_size: Grad-CAM batch size.

  Returns:
    {'workdir', 'model', 'image_size', 'images', 'accuracy', 'rows': [{'layer', 'map',
     'map_side', 'pointing_game', 'energy_in_mask', 'lesion_images', 'indicator'}]}.
  """
  bundle = checkpoint.restore_for_inference(workdir)
  cfg = bundle.config.data
  handle = data.prepare(cfg)
  greys, labels, index = gradcam.split_images(cfg, handle, split, batch_size)
  root = lesion_dir or handle.phantom_dir or cfg.manual_dir
  names = handle.filenames(split)
  size = bundle.image_size
  masks = np.stack([phantom.load_lesion_mask(root, names[i], size) for i in index])
  has_lesion = masks.reshape(len(masks), -1).any(1)
  lungs = np.stack([shortcut.lung_mask(g) for g in greys])
  shape = (batch_size, size, size, 3)
  out = {
    'workdir': workdir,
    'model': bundle.config.model.name,
    'image_size': size,
    'images': len(labels),
    'rows': [],
  }
  for layer in layers:
    common = {'batch_size': batch_size, 'layer': layer}
    cams, probs, _ = gradcam.cams_uint8(bundle.module, bundle.variables, greys, -1, **common)
    preds = probs.argmax(1)
    out['accuracy'] = float(np.mean(preds == labels))
    true_cams = gradcam.cams_uint8(
      bundle.module, bundle.variables, greys[has_lesion], labels[has_lesion], **common
    )[0]
    side = gradcam.map_side(bundle.module, shape, layer)
    ind = shortcut.indicator(
      shortcut.cam_shares(cams, lungs), preds, bundle.class_names, map_side=side
    )
    out['rows'].append(
      {
        'layer': layer,
        'map': gradcam.describe_layers(bundle.module, shape, layer),
        'map_side': side,
        'pointing_game': gradcam.pointing_game(true_cams, masks[has_lesion]),
        'energy_in_mask': gradcam.energy_in_mask(true_cams, masks[has_lesion]),
        'lesion_images': int(has_lesion.sum()),
        'indicator': ind,
      }
    )
  return out


def measure_folder(
  workdir: str,
  eval_dir: str,
  *,
  layers: tuple[str, ...] = ('last', 'auto'),
  batch_size: int = 32,
) -> dict:
  """The shortcut indicator of one workdir on a labelled folder's films for each layer choice.

  Returns:
    {'workdir', 'model', 'image_size', 'images', 'accuracy', 'rows': [{'layer', 'map',
     'map_side', 'indicator'}]} (no lesion masks on real films: no localisation figures).
  """
  bundle = checkpoint.restore_for_inference(workdir)
  folder = folder_eval.scan_labelled_folder(eval_dir, list(bundle.class_names))
  films = inference.read_films(
    folder.files, bundle.image_size, stored_size=dataset.stored_size(bundle.config.data)
  )
  greys, labels = films.inputs, folder.labels[films.ok]
  lungs = np.stack([shortcut.lung_mask(g) for g in greys])
  size = bundle.image_size
  shape = (batch_size, size, size, 3)
  out = {
    'workdir': workdir,
    'model': bundle.config.model.name,
    'image_size': size,
    'images': len(labels),
    'rows': [],
  }
  for layer in layers:
    cams, probs, _ = gradcam.cams_uint8(
      bundle.module, bundle.variables, greys, -1, batch_size=batch_size, layer=layer
    )
    preds = probs.argmax(1)
    out['accuracy'] = float(np.mean(preds == labels))
    side = gradcam.map_side(bundle.module, shape, layer)
    out['rows'].append(
      {
        'layer': layer,
        'map': gradcam.describe_layers(bundle.module, shape, layer),
        'map_side': side,
        'pointing_game': float('nan'),
        'energy_in_mask': float('nan'),
        'indicator': shortcut.indicator(
          shortcut.cam_shares(cams, lungs), preds, bundle.class_names, map_side=side
        ),
      }
    )
  return out


def table(results: list[dict]) -> str:
  """Markdown table: one row per workdir and layer."""
  lines = [
    '| model | layer | map | accuracy | pointing game | energy in lesion | '
    'max corner ratio (class) | peak off lungs (max class) | flagged |',
    '|---|---|---|---:|---:|---:|---|---:|---|',
  ]
  for res in results:
    for row in res['rows']:
      per = {k: v for k, v in row['indicator']['per_class'].items() if v['n']}
      ratio = {k: v['corners'] / v['corners_area'] for k, v in per.items()}
      top = max(ratio, key=ratio.get)
      peak = max(v['peak_outside_lung'] for v in per.values())
      flagged = row['indicator']['verdict']
      lines.append(
        f'| {res["model"]} ({res["workdir"]}) | {row["layer"]} | {row["map"]} | '
        f'{res["accuracy"]:.3f} | {row["pointing_game"]:.3f} | {row["energy_in_mask"]:.3f} | '
        f'{ratio[top]:.2f}x ({top}) | {peak:.2f} | {flagged} |'
      )
  return '\n'.join(lines)


__all__ = ['measure_folder', 'measure_workdir', 'table']
