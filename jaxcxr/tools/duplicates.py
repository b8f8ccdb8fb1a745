"""Exact and near-duplicate images: perceptual hashes, groups, and the closest pairs left apart.

Exact groups share `images.content_hash`; near groups are connected components of pairs whose
16x16 difference hash (dHash: 17x16 Lanczos thumbnail, bit = right neighbour brighter, 256 bits)
differs in <= `threshold` bits. Why 16x16 rather than the usual 8x8: chest films share their
layout, and on cxr_dev (1,200 real 224 px films) 64-bit hashes put 6 pairs of different pictures at
distance 0 and 79 pairs at <= 1 (one COVID vs Normal), whereas with 256 bits the closest distinct
pair is 19 bits apart. Measured moves of the same picture (256 bits, max over 30 films):
brightness +1: 2, JPEG q95/q75/q50: 3/5/7, resample 224 -> 299 / 128: 2/4, gamma 0.9: 4, brightness
+10 (clipping): 13; a 2 px shift (up to 29) or a 5 % crop (up to 40) is NOT caught. Default: 8 bits.

The inventory these functions read is `jaxcxr.tools.explore.Inventory` (names, labels, content
hashes, perceptual hashes of every inspected image).
"""

import collections
import dataclasses

import numpy as np
from PIL import Image
import tqdm

from jaxcxr.data import sampling

HASH_SIDE = 16  # dHash side: 16 x 16 = 256 bits
DEFAULT_DUP_THRESHOLD = 8


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


def near_duplicates(hashes: np.ndarray, content: list[str], threshold: int, *, block: int = 512,
                    progress: bool = False) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """Groups images whose hashes are within `threshold` bits (or whose content hashes are equal).

  Args:
    hashes: uint64 (n, words) packed perceptual hashes.
    content: n exact content hashes ('' = unusable image, left out of everything).
    threshold: largest Hamming distance that links two images.
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
  for s in tqdm.tqdm(starts, desc='Comparing hashes', unit='block',
                     disable=None if progress else True):
    rows = h[s:s + block]
    d = np.zeros((len(rows), m), np.uint16)
    for w in range(h.shape[1]):  # one word at a time: bounded temporaries
      d += np.bitwise_count(rows[:, w, None] ^ h[None, :, w]).astype(np.uint16)
    d[np.arange(len(rows)), s + np.arange(len(rows))] = np.iinfo(np.uint16).max  # self
    if m > 1:
      closest = d.argmin(axis=1)
      nearest[usable[s:s + len(rows)]] = d[np.arange(len(rows)), closest]
      partner[usable[s:s + len(rows)]] = usable[closest]
    for i, j in zip(*np.nonzero(d <= threshold)):
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


def closest_pairs(nearest: np.ndarray, partner: np.ndarray, groups: list[list[int]],
                  k: int = 6) -> list[tuple[int, int, int]]:
  """The k closest pairs (i, j, distance), i < j, of images not already in one duplicate group."""
  group_of = {i: n for n, g in enumerate(groups) for i in g}
  pairs = set()
  for i, (d, j) in enumerate(zip(nearest.tolist(), partner.tolist())):
    if d >= 0 and (i not in group_of or group_of.get(j) != group_of[i]):
      pairs.add((min(i, j), max(i, j), d))
  return sorted(pairs, key=lambda p: (p[2], p[0]))[:k]


def describe_groups(inv, groups: list[list[int]], class_names, split_of: dict,
                    notes: dict) -> list[dict]:
  """Duplicate groups as {'kind', 'cross_split', 'cross_class', 'splits', 'classes', 'members'}.

  kind 'exact': all members have equal pixels; 'near': some differ (distance = hash bits from the
  first member). Splits are those prepare put the members in; left-out members are 'not used'.
  Sorted: cross-split groups first (leakage between splits), then cross-class, larger, by name.
  """
  out = []
  for g in groups:
    g = sorted(g, key=lambda i: inv.names[i])
    ref = g[0]
    members = [{'file': inv.names[i], 'class': class_names[inv.labels[i]],
                'split': split_of.get(inv.names[i], 'not used'),
                'note': notes.get(inv.names[i], ''),
                'distance': hamming(inv.phash[i], inv.phash[ref]),
                'same_pixels_as_first': inv.content[i] == inv.content[ref]} for i in g]
    used = sorted({m['split'] for m in members} - {'not used'}, key=sampling.SPLITS.index)
    classes = sorted({m['class'] for m in members}, key=list(class_names).index)
    out.append({'kind': 'exact' if all(m['same_pixels_as_first'] for m in members) else 'near',
                'cross_split': len(used) > 1, 'cross_class': len(classes) > 1,
                'splits': used, 'classes': classes, 'members': members, '_index': g})
  out.sort(key=lambda d: (not d['cross_split'], not d['cross_class'], -len(d['members']),
                          d['members'][0]['file']))
  return out


@dataclasses.dataclass
class Duplicates:
  """Exact and near-duplicate groups of an inventory and the closest pairs outside them.

  Attributes:
    groups: `describe_groups` dicts, cross-split first (each keeps its inventory indices in
      '_index').
    nearest: int (n,) hash distance of each image to its closest other usable image (-1: none).
    pairs: the closest pairs not in one group: {'distance', 'members', '_index': (i, j)}.
    threshold: the largest hash distance that links two images.
  """
  groups: list
  nearest: np.ndarray
  pairs: list
  threshold: int


def find_duplicates(inv, class_names, split_of: dict, notes: dict, threshold: int, *,
                    progress: bool = False) -> Duplicates:
  """Groups the inventory's exact and near duplicates and lists the closest pairs left apart."""
  raw_groups, nearest, partner = near_duplicates(inv.phash, inv.content, threshold,
                                                 progress=progress)
  groups = describe_groups(inv, raw_groups, class_names, split_of, notes)
  pairs = [{'distance': d, 'members': [
      {'file': inv.names[i], 'class': class_names[inv.labels[i]],
       'split': split_of.get(inv.names[i], 'not used')} for i in (a, b)], '_index': (a, b)}
           for a, b, d in closest_pairs(nearest, partner, raw_groups)]
  return Duplicates(groups, nearest, pairs, threshold)
