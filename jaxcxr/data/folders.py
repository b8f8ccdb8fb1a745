"""The Kaggle "COVID-19 Radiography Database" folder layout: finding class folders and their files.

    <root>/COVID/[images/]*.png        masks/ and other subfolders are ignored
    <root>/Normal/[images/]*.png       a metadata .xlsx beside the folders is ignored
    <root>/Viral Pneumonia/[images/]*.png
    <root>/Lung_Opacity/[images/]*.png   (4class only)

Class folders are matched by name (FOLDER_ALIASES: older Kaggle releases used other spellings),
exactly or case-insensitively. Used by the dataset builder (`jaxcxr.data.builder`), the folder
evaluation (`launch.evaluate --eval_dir`), the quality benchmark and `launch.explore`.
"""

import dataclasses
import hashlib
from pathlib import Path

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
