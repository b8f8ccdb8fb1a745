"""Look-alike films: perceptual hashes and the groups of near-duplicate pictures.

Exact groups share `images.content_hash`; near groups are connected components of pairs whose
16x16 difference hash (dHash: 17x16 Lanczos thumbnail, bit = right neighbour brighter, 256 bits)
differs in <= `threshold` bits. Why 16x16 rather than the usual 8x8: chest films share their
layout, and on cxr_dev (1,200 real 224 px films) 64-bit hashes put 6 pairs of different pictures at
distance 0 and 79 pairs at <= 1 (one COVID vs Normal), whereas with 256 bits the closest distinct
pair is 19 bits apart. Measured moves of the same picture (256 bits, max over 30 films):
brightness +1: 2, JPEG q95/q75/q50: 3/5/7, resample 224 -> 299 / 128: 2/4, gamma 0.9: 4, brightness
+10 (clipping): 13; a 2 px shift (up to 29) or a 5 % crop (up to 40) is NOT caught. Default: 8 bits.

Two users: the dataset builder keeps every group in one split (`sampling.stratified_split`'s
`groups`), so re-uploads and re-encodings of a film never sit on both sides of a train / test
boundary; `jaxcxr.tools.duplicates` shows the same groups in the exploration report.
"""

import collections

import numpy as np
import tqdm
from PIL import Image

HASH_SIDE = 16  # dHash side: 16 x 16 = 256 bits
HASH_BITS = HASH_SIDE * HASH_SIDE
DEFAULT_THRESHOLD = 8


def perceptual_hash(image: np.ndarray, side: int = HASH_SIDE) -> np.ndarray:
  """Difference hash of uint8 grey (H, W): uint64 (side * side / 64,) packed bits.

  The image is resampled to (side + 1) x side (Lanczos); bit (r, c) is set when pixel (r, c + 1) is
  brighter than (r, c). Brightness offsets, re-encoding and resampling barely change it.
  """
  small = np.asarray(Image.fromarray(image).resize((side + 1, side), Image.LANCZOS), np.int16)
  bits = (small[:, 1:] > small[:, :-1]).ravel()
  return np.packbits(bits).view('>u8').astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
  """Number of differing bits between two packed hashes."""
  return int(np.bitwise_count(np.asarray(a) ^ np.asarray(b)).sum())


def near_duplicates(
  hashes: np.ndarray,
  content: list[str],
  threshold: int,
  *,
  block: int = 512,
  progress: bool = False,
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """Groups images whose hashes are within `threshold` bits (or whose content hashes are equal).

  Args:
    hashes: uint64 (n, words) packed perceptual hashes.
    content: n exact content hashes ('' = unusable image, left out of everything).
    threshold: largest Hamming distance that links two images (< 0: only equal content links).
    block: rows compared at once (memory ~ block * n * 10 bytes).
    progress: tqdm bar over the blocks (on a terminal).

  Returns:
    (groups: connected components with >= 2 members, each a sorted index list, sorted by first
    index; nearest: int (n,) distance of each image to its closest other usable image, -1 if none;
    partner: int (n,) the index of that closest image, -1 if none).
  """
  usable = np.flatnonzero([bool(c) for c in content])
  h = np.asarray(hashes, np.uint64)[usable]
  m = len(usable)
  parent = list(range(m))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  def union(i, j):
    ri, rj = find(i), find(j)
    if ri != rj:
      parent[max(ri, rj)] = min(ri, rj)

  nearest = np.full(len(content), -1, np.int64)
  partner = np.full(len(content), -1, np.int64)
  starts = range(0, m, block)
  for s in tqdm.tqdm(
    starts, desc='Comparing hashes', unit='block', disable=None if progress else True
  ):
    rows = h[s : s + block]
    d = np.zeros((len(rows), m), np.uint16)
    for w in range(h.shape[1]):  # one word at a time: bounded temporaries
      d += np.bitwise_count(rows[:, w, None] ^ h[None, :, w]).astype(np.uint16)
    d[np.arange(len(rows)), s + np.arange(len(rows))] = np.iinfo(np.uint16).max  # self
    if m > 1:
      closest = d.argmin(axis=1)
      nearest[usable[s : s + len(rows)]] = d[np.arange(len(rows)), closest]
      partner[usable[s : s + len(rows)]] = usable[closest]
    if threshold >= 0:
      for i, j in zip(*np.nonzero(d <= threshold), strict=True):
        if s + i < j:
          union(s + i, int(j))
  by_content: dict[str, int] = {}
  for i, idx in enumerate(usable):
    union(by_content.setdefault(content[idx], i), i)
  comps: dict[int, list[int]] = collections.defaultdict(list)
  for i in range(m):
    comps[find(i)].append(int(usable[i]))
  groups = sorted((sorted(g) for g in comps.values() if len(g) > 1), key=lambda g: g[0])
  return groups, nearest, partner


def restrict(groups: list[list[int]], keep: np.ndarray) -> list[list[int]]:
  """`groups` (indices into the full list) over the kept items only, re-indexed into them.

  Args:
    groups: index lists into a list of n items.
    keep: bool (n,): the items that remain (e.g. after dropping exact copies).

  Returns:
    The groups that still have >= 2 kept members, as indices into the kept items (sorted).
  """
  new_index = np.cumsum(keep) - 1
  out = [[int(new_index[i]) for i in g if keep[i]] for g in groups]
  return sorted((g for g in out if len(g) > 1), key=lambda g: g[0])


def describe(groups: list[list[int]], names: list[str], classes: list[str], threshold: int) -> dict:
  """The dataset-metadata entry of the look-alike groups a prepare kept in one split each.

  Args:
    groups: index lists into `names` / `classes` (the kept films).
    names: file names; classes: each film's class name.
    threshold: the hash distance that linked them (< 0: no grouping).

  Returns:
    {'hash', 'threshold_bits', 'num_groups', 'num_files', 'groups': [[file, ...], ...] (sorted),
     'mixed_label_groups': [[file (class), ...], ...]: groups whose members carry different labels
     (kept, each with its own label, in one split: they may be one patient's films at two stages,
     or a labelling error worth checking)}.
  """
  named = sorted(sorted(names[i] for i in g) for g in groups)
  mixed = sorted(
    sorted(f'{names[i]} ({classes[i]})' for i in g)
    for g in groups
    if len({classes[i] for i in g}) > 1
  )
  return {
    'hash': f'dHash {HASH_SIDE}x{HASH_SIDE}',
    'threshold_bits': int(threshold),
    'num_groups': len(named),
    'num_files': sum(len(g) for g in named),
    'groups': named,
    'mixed_label_groups': mixed,
  }


def summary_line(described: dict) -> str:
  """One line of `describe`'s entry: how many films were kept together, in how many groups."""
  if described.get('threshold_bits', -1) < 0:
    return 'look-alike films: not grouped (lookalike_threshold < 0: split film by film)'
  return (
    f'look-alike films kept in one split: {described["num_files"]} films in '
    f'{described["num_groups"]} groups ({described["hash"]} within '
    f'{described["threshold_bits"]} bits; groups with different labels: '
    f'{len(described["mixed_label_groups"])})'
  )
