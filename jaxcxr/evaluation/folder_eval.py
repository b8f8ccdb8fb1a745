"""Scoring a trained workdir on any labelled Kaggle-layout folder: a new hospital's films.

  python -m launch.evaluate --workdir W --eval_dir FOLDER [--out DIR]

`evaluate_folder` finds the class folders of FOLDER as the dataset builder finds them
(`jaxcxr.data.folders`: COVID/, Normal/, Viral Pneumonia/ [, Lung_Opacity/ for a 4-class model],
their aliases, matched case-insensitively, `<Class>/images/` when present; subfolders such as masks/
and hidden files skipped), reads and decodes every file once (`inference.read_films`: the input
checks, then the run's evaluation resizes through its stored size), predicts with the run's model
(test-time augmentation when the run used it) in one forward pass that also gives the OOD features
(`inference.make_outputs_fn`), and writes the report of
`report.write_report`: metrics with bootstrap CIs, confusion matrix, ROC curves, reliability
diagram, the Grad-CAM shortcut indicator with its example panels (source resolution), plus
`predictions.csv` (one row per scored film) and `unreadable.csv` (file, reason). Nothing is
prepared or written in the data_dir; nothing is deduplicated (every readable film counts).
With the run's out-of-distribution score fitted (every run that trained; `launch.fit_ood` for older
workdirs), the report has its section too, the folder's films as the in-distribution set: the
share of them that `launch.predict` would flag (a new hospital's false-alarm rate) and the AUROC of
the score against generated pictures (noise, photos, text, transformed films).

With a labels CSV (`labels_csv`, `launch.evaluate --labels_csv`: file or study folder -> class,
`folders.read_labels_csv`) a public set is scored as it is downloaded, beside or instead of class
folders; a film labelled twice with two classes, an unknown class or a missing file is an error
naming it (and the CSV row). DICOM films are read as every command reads them
(`jaxcxr.data.dicom`); the header's input checks feed the OOD section.

Unreadable files are listed and counted, not fatal. Subfolders that are no class of the model
(Lung_Opacity/ for a 3-class model, anything else) are named in the report and skipped; a class of
the model without a folder is noted (its recall is 0 by convention), and a folder with no class
subfolder at all is an error naming the folder and the layout expected.
"""

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from jaxcxr.data import dataset
from jaxcxr.data import folders as folders_lib
from jaxcxr.data import images as images_lib
from jaxcxr.evaluation import gradcam, inference, ood_eval, report
from jaxcxr.evaluation import ood as ood_lib
from jaxcxr.evaluation import robustness as robustness_lib
from jaxcxr.evaluation import shortcut as shortcut_lib
from jaxcxr.evaluation.metrics import compute_metrics
from jaxcxr.training import checkpoint, run_log

_CHUNK = 256  # films per Grad-CAM pass of the shortcut analysis (bounded memory)


@dataclasses.dataclass
class LabelledFolder:
  """The films of a Kaggle-layout folder and their labels.

  Attributes:
    root: the folder.
    files: candidate files, class by class (model order), sorted by name within a class.
    labels: int64 (len(files),) class index of each file.
    class_folders: class name -> its image folder, relative to root (classes found only).
    missing: classes of the model without a folder.
    ignored_folders: subfolders of root that hold no class of the model (e.g. Lung_Opacity/).
    hidden: hidden files skipped (relative to root).
  """

  root: Path
  files: list[Path]
  labels: np.ndarray
  class_folders: dict[str, str]
  missing: list[str]
  ignored_folders: list[str]
  hidden: list[str]

  def relative(self, path: Path) -> str:
    """A file's name relative to the folder (as in the report's CSVs); a file of a labels CSV
    outside it: its path."""
    try:
      return Path(path).relative_to(self.root).as_posix()
    except ValueError:
      return str(path)


def scan_labelled(eval_dir, class_names: Sequence[str], labels_csv='') -> LabelledFolder:
  """`scan_labelled_folder`, plus (or instead) the films of a labels CSV.

  Paths of the CSV are relative to `eval_dir` when given, else to the CSV's folder.

  Raises:
    FileNotFoundError / ValueError: as `scan_labelled_folder` and `folders.read_labels_csv`; a
      film of both with two different classes (naming it and both classes).
  """
  if not labels_csv:
    return scan_labelled_folder(eval_dir, class_names)
  names = tuple(class_names)
  files, labels, _ = folders_lib.read_labels_csv(labels_csv, names, root=eval_dir or None)
  files = [Path(f).resolve() for f in files]
  root = Path(eval_dir or Path(labels_csv).expanduser().parent).expanduser().resolve()
  folder = LabelledFolder(root, [], np.zeros(0, np.int64), {}, list(names), [], [])
  if eval_dir and folders_lib.class_folders(root, names):
    folder = scan_labelled_folder(eval_dir, class_names)
  label_of = {f: int(k) for f, k in zip(folder.files, folder.labels, strict=True)}
  for f, k in zip(files, labels, strict=True):
    if label_of.get(f, k) != k:
      raise ValueError(
        f'{folder.relative(f)} is labelled {names[k]!r} in {labels_csv} but lies in the '
        f'{names[label_of[f]]!r} class folder. Fix the CSV or move the file.'
      )
    label_of[f] = k
  order = sorted(label_of, key=lambda f: (label_of[f], str(f)))
  found = {names[label_of[f]] for f in order}
  return dataclasses.replace(
    folder,
    files=order,
    labels=np.asarray([label_of[f] for f in order], np.int64),
    missing=[c for c in names if c not in found],
  )


def scan_labelled_folder(eval_dir, class_names: Sequence[str]) -> LabelledFolder:
  """The films of a Kaggle-layout folder for a model with `class_names`.

  Raises:
    FileNotFoundError: `eval_dir` is not a folder, has no subfolder of any of the classes, or its
      class folders hold no files; the message names the folder and the layout expected.
    ValueError: two subfolders could hold one class (e.g. covid/ and Covid/).
  """
  root = Path(eval_dir).expanduser().resolve()
  expected = ', '.join(f'{c}/' for c in class_names)
  if not root.is_dir():
    raise FileNotFoundError(
      f'--eval_dir {root} is not a folder. Give a folder in the Kaggle '
      f'layout, one subfolder per class: {expected}'
    )
  folders = folders_lib.class_folders(root, tuple(class_names))
  subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
  if not folders:
    raise FileNotFoundError(
      f'{root} has no class subfolders (found: {subdirs or "no subfolders"}). Expected the '
      f'Kaggle layout, one subfolder per class of the model: {expected} (names matched '
      'case-insensitively; images directly inside or in <Class>/images/).'
    )
  used = {folder.relative_to(root).parts[0] for folder in folders.values()}
  files, labels, hidden = [], [], []
  for k, name in enumerate(class_names):
    if name not in folders:
      continue
    found, dot = folders_lib.class_files(folders[name])
    files += found
    labels += [k] * len(found)
    hidden += [p.relative_to(root).as_posix() for p in dot]
  if not files:
    raise FileNotFoundError(f'The class folders of {root} ({sorted(used)}) hold no files.')
  return LabelledFolder(
    root=root,
    files=files,
    labels=np.asarray(labels, np.int64),
    class_folders={c: f.relative_to(root).as_posix() for c, f in folders.items()},
    missing=[c for c in class_names if c not in folders],
    ignored_folders=[d for d in subdirs if d not in used],
    hidden=hidden,
  )


def shortcut_on_films(
  module,
  variables: dict,
  greys: np.ndarray,
  labels: np.ndarray,
  names: Sequence[str],
  sources: Sequence[Path],
  out_dir: str,
  class_names: Sequence[str],
  *,
  batch_size: int = 16,
  per_class: int = shortcut_lib.EXAMPLES_PER_CLASS,
  alpha: float = 0.4,
) -> dict:
  """`shortcut.analyse_split` for films given as arrays (no prepared split).

  Grad-CAM of the predicted class for every film (in chunks; only the shares are kept), the
  indicator, and source-resolution panels of the most confident right and wrong predictions per
  predicted class in `out_dir/shortcut/`.

  Args:
    module, variables: the model.
    greys: uint8 (N, S, S, 1) films as the model sees them; labels: (N,) true classes.
    names: (N,) names shown on the panels; sources: (N,) files the panels show.
    out_dir: the panels go to `out_dir/shortcut/`.
    class_names: the model's classes.
    batch_size: Grad-CAM batch size (static: one compilation).
    per_class: right and wrong examples per predicted class.
    alpha: overlay weight.

  Returns:
    {'indicator', 'figures': [(title, path relative to out_dir)], 'images': N}.
  """
  probs, shares = [], []
  for start in range(0, len(greys), _CHUNK):
    chunk = greys[start : start + _CHUNK]
    cams, p, _ = gradcam.cams_uint8(module, variables, chunk, -1, batch_size=batch_size)
    lungs = np.stack([shortcut_lib.lung_mask(g) for g in chunk])
    probs.append(p)
    shares.append(shortcut_lib.cam_shares(cams, lungs))
  probs = np.concatenate(probs)
  shares = {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}
  preds = probs.argmax(1)
  shape = (batch_size, *greys.shape[1:3], 3)
  side = gradcam.map_side(module, shape)
  ind = shortcut_lib.indicator(shares, preds, class_names, map_side=side)
  chosen = shortcut_lib.select_examples(labels, preds, probs, per_class)
  os.makedirs(os.path.join(out_dir, 'shortcut'), exist_ok=True)
  figures = []
  # The maps of the chosen films again (same compiled batch shape), rather than keeping every map.
  chosen_cams = (
    gradcam.cams_uint8(
      module, variables, greys[[i for i, _, _ in chosen]], -1, batch_size=batch_size
    )[0]
    if chosen
    else []
  )
  for (i, kind, rank), cam in zip(chosen, chosen_cams, strict=True):
    original = images_lib.load_grey(sources[i])  # readable: it was loaded for the prediction
    header = gradcam.probability_header(probs[i], class_names, true=int(labels[i]), name=names[i])
    header.append(
      f'Grad-CAM mass: corners {shares["corners"][i]:.2f}, border '
      f'{shares["border"][i]:.2f}, outside lungs {shares["outside_lung"][i]:.2f}'
    )
    pred = class_names[preds[i]]
    rel = os.path.join('shortcut', f'{pred.replace(" ", "_")}_{kind}_{rank}.png')
    Image.fromarray(gradcam.source_panel(original, cam, header, alpha=alpha)).save(
      os.path.join(out_dir, rel)
    )
    figures.append((f'predicted {pred}, {kind} #{rank}', rel))
  return {
    'indicator': ind,
    'figures': figures,
    'images': len(greys),
    'cam_map': gradcam.describe_layers(module, shape),
  }


def _write_csvs(
  out_dir: str,
  folder: LabelledFolder,
  ok: np.ndarray,
  probs: np.ndarray,
  failed: list[tuple[int, str]],
  class_names: Sequence[str],
) -> dict[str, str]:
  paths = {
    'predictions': os.path.join(out_dir, 'predictions.csv'),
    'unreadable': os.path.join(out_dir, 'unreadable.csv'),
  }
  with open(paths['predictions'], 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['file', 'true_label', 'predicted_label'] + [f'prob_{c}' for c in class_names])
    for i, p in zip(ok, probs, strict=True):
      writer.writerow(
        [
          folder.relative(folder.files[i]),
          class_names[folder.labels[i]],
          class_names[int(p.argmax())],
        ]
        + [f'{v:.6f}' for v in p]
      )
  with open(paths['unreadable'], 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['file', 'reason'])
    for i, reason in failed:
      writer.writerow([folder.relative(folder.files[i]), reason])
  return paths


def _notes(folder: LabelledFolder, failed: list, class_names: Sequence[str]) -> list[str]:
  notes = []
  if folder.missing:
    notes.append(
      f'No folder for {", ".join(repr(c) for c in folder.missing)} in {folder.root}: '
      "the model's other classes were scored."
    )
  if folder.ignored_folders:
    notes.append(
      f'Not scored: {", ".join(d + "/" for d in folder.ignored_folders)} (no class '
      f'of this model: {", ".join(class_names)}).'
    )
  if failed:
    notes.append(
      f'{len(failed)} unreadable file(s) skipped (listed with the reason in unreadable.csv).'
    )
  return notes


def _ood_section(
  bundle,
  model: ood_lib.OodModel,
  films: inference.Films,
  outputs: np.ndarray,
  name: str,
  batch_size: int,
) -> dict:
  """The OOD section with the folder's readable films as the in-distribution set, from the read
  and forward pass that gave the predictions."""
  inside = ood_eval.scored(model, films.reasons, list(films.greys.values()), outputs)
  return ood_eval.evaluate(
    bundle,
    model,
    [],
    in_name=f'folder {name}',
    inside=inside,
    per_set=min(ood_eval.DEFAULT_PER_SET, max(16, len(films.ok))),
    batch_size=batch_size,
    material_size=min(224, 2 * int(bundle.image_size)),
  )


def evaluate_folder(
  workdir: str,
  eval_dir: str,
  *,
  labels_csv: str = '',
  which: str = 'best',
  out: str = '',
  batch_size: int = 0,
  bootstrap: int = -1,
  shortcut: bool = True,
  ood: bool = True,
  robustness: bool = True,
  figures: bool = True,
) -> dict:
  """Scores a training workdir's checkpoint on a labelled Kaggle-layout folder (launch.evaluate).

  Args:
    workdir: training workdir (config.json + checkpoints; metrics.jsonl for the curves).
    eval_dir: the labelled folder (see the module docstring); '' with `labels_csv`.
    labels_csv: a labels CSV (file or folder -> class), beside or instead of class folders.
    which: 'best' or 'latest' checkpoint.
    out: report folder; '' = <workdir>/eval_folder_<folder name>.
    batch_size: 0 = config.eval.batch_size.
    bootstrap: CI resamples; -1 = config.eval.bootstrap.
    shortcut: add the Grad-CAM shortcut indicator and example panels.
    ood: add the out-of-distribution section when the checkpoint has a fitted score (else a note
      says how to fit one).
    robustness: add the robustness section (`jaxcxr.evaluation.robustness`: the films zoomed,
      their border frame or corner text squares from a film of another class).
    figures: draw the report's PNG figures (`report.write_report`).

  Returns:
    {'metrics', 'files' (everything written), 'out_dir', 'shortcut', 'ood' (the section or None),
     'robustness' (the section or None),
     'name' (the folder's name, the report's split title), 'files_found', 'unreadable': [(file
     relative to eval_dir, reason)], 'ignored_folders', 'missing_classes'}.

  Raises:
    FileNotFoundError: no workdir checkpoint, or no usable folder (the message says what is
      expected); ValueError: no file of the folder could be read.
  """
  bundle = checkpoint.restore_for_inference(workdir, which=which)
  cfg = bundle.config
  names = list(bundle.class_names)
  folder = scan_labelled(eval_dir, names, labels_csv)
  batch_size = batch_size or int(cfg.eval.batch_size)
  n_bootstrap = bootstrap if bootstrap >= 0 else int(cfg.eval.bootstrap)
  ood_model = ood_lib.load_for(workdir, bundle)[0] if ood else None
  # Each file is read and decoded once; one forward pass gives the probabilities and, with a
  # fitted score, the OOD features.
  films = inference.read_films(
    folder.files,
    bundle.image_size,
    stored_size=dataset.stored_size(cfg.data),
    max_pixels=int(cfg.data.get('max_image_pixels', images_lib.DEFAULT_MAX_PIXELS)),
    # Only the films the OOD section's transformed sets draw stay at source resolution.
    keep_greys=(
      ood_eval.material_films(len(folder.files), ood_eval.DEFAULT_PER_SET, seed=0)
      if ood_model is not None
      else ()
    ),
  )
  greys, ok, failed = films.inputs, films.ok, films.failed
  unreadable = [(folder.relative(folder.files[i]), reason) for i, reason in failed]
  if not len(ok):
    shown = '\n'.join(f'  {n}: {r}' for n, r in unreadable[:10])
    raise ValueError(
      f'None of the {len(folder.files)} files in the class folders of '
      f'{folder.root} could be read:\n{shown}'
    )
  labels = folder.labels[ok]
  make = inference.make_predict_fn if ood_model is None else inference.make_outputs_fn
  probs = inference.predict_arrays(
    make(bundle.module, bundle.variables, tta=bundle.tta), greys, batch_size
  )
  outputs = None
  if ood_model is not None:
    probs, outputs = probs
  probs = probs.astype(np.float64)
  metrics = compute_metrics(
    labels, probs, names, n_bootstrap=n_bootstrap, seed=int(cfg.get('seed', 0))
  )
  metrics['notes'] += _notes(folder, failed, names)
  name = folder.root.name
  out_dir = out or os.path.join(workdir, f'eval_folder_{name}')
  os.makedirs(out_dir, exist_ok=True)
  analysis = None
  if shortcut:
    analysis = shortcut_on_films(
      bundle.module,
      bundle.variables,
      greys,
      labels,
      [folder.relative(folder.files[i]) for i in ok],
      [folder.files[i] for i in ok],
      out_dir,
      names,
      batch_size=batch_size,
    )
  robust = None
  if robustness:
    robust = robustness_lib.for_model(
      bundle.module,
      bundle.variables,
      greys,
      labels,
      names,
      zoom_range=tuple(cfg.data.augment.zoom),
      batch_size=batch_size,
    )
  ood_section = None
  if ood_model is not None:
    ood_section = _ood_section(bundle, ood_model, films, outputs, name, batch_size)
  elif ood:
    metrics['notes'].append(
      f'No out-of-distribution section: no score is fitted for this '
      f'checkpoint (python -m launch.fit_ood --workdir {workdir}).'
    )
  extra = {
    'workdir': os.path.abspath(workdir),
    'checkpoint': which,
    'step': int(bundle.step),
    'model': cfg.model.name,
    'image_size': int(bundle.image_size),
    'eval_dir': str(folder.root),
    'labels_csv': str(labels_csv) or 'none',
    'files_found': len(folder.files),
    'unreadable_files': len(failed),
    'ignored_folders': ', '.join(folder.ignored_folders) or 'none',
  }
  written = _write_csvs(out_dir, folder, ok, probs, failed, names)
  written.update(
    report.write_report(
      out_dir,
      metrics,
      labels,
      probs,
      names,
      history=run_log.read_rows(workdir, 'epoch'),
      split=name,
      extra=extra,
      shortcut=analysis,
      ood=ood_section,
      robustness=robust,
      figures=figures,
    )
  )
  return {
    'metrics': metrics,
    'files': written,
    'out_dir': out_dir,
    'shortcut': analysis,
    'ood': ood_section,
    'robustness': robust,
    'name': name,
    'files_found': len(folder.files),
    'unreadable': unreadable,
    'ignored_folders': folder.ignored_folders,
    'missing_classes': folder.missing,
  }
