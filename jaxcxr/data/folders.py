"""The Kaggle "COVID-19 Radiography Database" folder layout: finding class folders and their files.

    <root>/COVID/[images/]*.png        masks/ and other subfolders are ignored
    <root>/Normal/[images/]*.png       a metadata .xlsx beside the folders is ignored
    <root>/Viral Pneumonia/[images/]*.png
    <root>/Lung_Opacity/[images/]*.png   (4class only)

Class folders are matched by name (FOLDER_ALIASES: older Kaggle releases used other spellings),
exactly or case-insensitively. Used by the dataset builder (`jaxcxr.data.builder`), the folder
evaluation (`launch.evaluate --eval_dir`), the quality benchmark and `launch.explore`. Every
non-hidden file of a class folder is a film, whatever its name (PNG, JPEG, DICOM with or without
`.dcm`: the decoder goes by content); one that does not decode is reported by name.

Outside the class layout (`launch.predict --images`, `launch.gradcam`, `launch.fit_ood
--in_dir`), `list_films` finds films by extension (`IMAGE_EXTENSIONS`) or, for files with no or
another extension (hospital exports named by UID), by the DICOM preamble; a folder is searched
recursively (study / series / instance). `read_labels_csv` reads a labels CSV (file or folder ->
class) for a public set scored as downloaded.
"""

import csv
import dataclasses
import glob
import hashlib
import os
from pathlib import Path

from jaxcxr.data import dicom

# Extensions of films (lower case); a file with another extension counts only with the DICOM
# preamble (so a .xlsx or .txt beside the films is never picked up).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff') + dicom.EXTENSIONS
# Header names of a labels CSV's two columns (case-insensitive).
FILE_COLUMNS = ('file', 'path', 'filename', 'image', 'image_path', 'study', 'study_path')
LABEL_COLUMNS = ('label', 'class', 'class_name', 'diagnosis')

# Accepted folder names per class (older Kaggle releases used other spellings).
FOLDER_ALIASES = {
  'COVID': ('COVID', 'COVID-19'),
  'Normal': ('Normal', 'NORMAL'),
  'Viral Pneumonia': ('Viral Pneumonia', 'Viral_Pneumonia'),
  'Lung_Opacity': ('Lung_Opacity', 'Lung Opacity'),
}


@dataclasses.dataclass
class Entry:
  """A file of a class folder: its label, path and name relative to the folder scanned."""

  label: int
  path: Path
  name: str  # relative to the manual folder, posix


def _class_dir(root: Path, class_name: str) -> Path | None:
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
    raise ValueError(
      f"{len(found)} folders in {root} could hold the '{class_name}' images: "
      f'{[p.name for p in found]}. Merge them into one {class_name}/ folder.'
    )
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
  return (
    [p for p in files if not p.name.startswith('.')],
    [p for p in files if p.name.startswith('.')],
  )


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
    'builder config without this class (--config.data.builder_config=...).'
  )


def scan_folder(manual_dir: Path, class_names: tuple[str, ...]) -> tuple[list[Entry], list[str]]:
  """Lists candidate files per class (sorted). Returns (entries, ignored hidden files)."""
  if not manual_dir.is_dir():
    raise FileNotFoundError(
      f'Manual data folder {manual_dir} does not exist. Download the Kaggle "COVID-19 '
      'Radiography Database", unzip it and pass its folder as config.data.manual_dir '
      '(--config.data.manual_dir=PATH).'
    )
  entries, ignored = [], []
  for label, name in enumerate(class_names):
    folder = find_class_folder(manual_dir, name)
    files, hidden = class_files(folder)
    ignored += [p.relative_to(manual_dir).as_posix() for p in hidden]
    if not files:
      raise FileNotFoundError(
        f"Class folder {folder} contains no image files. Put the '{name}' images there, or use "
        'a builder config without this class.'
      )
    entries += [Entry(label, p, p.relative_to(manual_dir).as_posix()) for p in files]
  return entries, ignored


def folder_fingerprint(manual_dir: Path, class_names: tuple[str, ...]) -> dict:
  """Cheap identity of a manual folder: file count and a hash of relative names + byte sizes."""
  entries, _ = scan_folder(manual_dir, class_names)
  h = hashlib.blake2b(digest_size=8)
  for e in entries:
    h.update(f'{e.label}\0{e.name}\0{e.path.stat().st_size}\n'.encode())
  return {'num_files': len(entries), 'hash': h.hexdigest()}


def is_film_file(path) -> bool:
  """A film by extension (`IMAGE_EXTENSIONS`), else by the DICOM preamble (132 bytes read)."""
  name = os.path.basename(str(path))
  if name.startswith('.'):
    return False
  if name.lower().endswith(IMAGE_EXTENSIONS):
    return True
  try:
    with open(path, 'rb') as f:
      return dicom.has_preamble(f.read(132))
  except OSError:
    return False


def list_films(spec: str) -> list[str]:
  """Films of a folder (recursive, sorted), a glob pattern, or one file (`is_film_file`).

  A file named on its own is returned as it is (its decode says what is wrong with it); files of
  a folder or a glob are kept when `is_film_file`; a DICOMDIR (a CD's index, never an image) is
  skipped in a folder or a glob.
  """
  if os.path.isdir(spec):
    found = []
    for root, dirs, files in os.walk(spec):
      dirs[:] = [d for d in dirs if not d.startswith('.')]
      found += [
        os.path.join(root, f)
        for f in files
        if f.upper() != 'DICOMDIR' and is_film_file(os.path.join(root, f))
      ]
    return sorted(found)
  if os.path.isfile(spec):
    return [spec]
  matches = sorted(glob.glob(spec, recursive=True))
  if not glob.has_magic(spec):
    return []
  out = []
  for p in matches:
    if os.path.isdir(p):
      out += list_films(p)
    elif os.path.basename(p).upper() != 'DICOMDIR' and is_film_file(p):
      out.append(p)
  return sorted(set(out))


def class_of(value: str, class_names: tuple[str, ...]) -> str | None:
  """The class a label names: a class name or an alias (FOLDER_ALIASES), case-insensitive."""
  wanted = value.strip().lower().replace('_', ' ')
  for name in class_names:
    aliases = FOLDER_ALIASES.get(name, (name,)) + (name,)
    if wanted in {a.lower().replace('_', ' ') for a in aliases}:
      return name
  return None


def read_labels_csv(
  csv_path, class_names: tuple[str, ...], root=None
) -> tuple[list[Path], list[int], list[str]]:
  """Films and labels of a labels CSV: one row per file (or per folder: every film in it).

  The header names a file column (`FILE_COLUMNS`) and a label column (`LABEL_COLUMNS`); paths are
  relative to `root` (default: the CSV's folder) or absolute; labels are class names or aliases.

  Returns:
    (files, labels (class indices), names: each file as the CSV gave it, or as found in a folder).

  Raises:
    FileNotFoundError: no CSV, or a row's file / folder does not exist (naming the row).
    ValueError: no usable header, a row with an unknown class or no file (naming the row).
  """
  csv_path = Path(csv_path).expanduser()
  if not csv_path.is_file():
    raise FileNotFoundError(f'--labels_csv {csv_path} does not exist.')
  base = Path(root).expanduser() if root else csv_path.parent
  with open(csv_path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    file_col = next((columns[c] for c in FILE_COLUMNS if c in columns), None)
    label_col = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    if file_col is None or label_col is None:
      raise ValueError(
        f'{csv_path}: the header {list(columns)} needs a file column (one of {FILE_COLUMNS}) '
        f'and a label column (one of {LABEL_COLUMNS}).'
      )
    files, labels, names = [], [], []
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header
      entry, label = (row.get(file_col) or '').strip(), (row.get(label_col) or '').strip()
      if not entry and not label:
        continue
      where = f'{csv_path} row {row_no}'
      if not entry:
        raise ValueError(f'{where}: no file in column {file_col!r}. Fill it in or delete the row.')
      name = class_of(label, class_names)
      if name is None:
        raise ValueError(
          f"{where} ({entry}): unknown class {label!r}; the model's classes are "
          f'{list(class_names)} (or their folder aliases). Fix the label or delete the row.'
        )
      path = Path(entry).expanduser()
      path = path if path.is_absolute() else base / path
      if path.is_dir():
        found = list_films(str(path))
        files += [Path(p) for p in found]
        names += [os.path.join(entry, os.path.relpath(p, path)) for p in found]
        labels += [class_names.index(name)] * len(found)
      elif path.is_file():
        files.append(path)
        names.append(entry)
        labels.append(class_names.index(name))
      else:
        raise FileNotFoundError(
          f'{where}: {entry} does not exist (looked for {path}). Fix the path (relative to '
          f'{base}) or delete the row.'
        )
  if not files:
    raise ValueError(f'{csv_path} lists no films.')
  return files, labels, names
