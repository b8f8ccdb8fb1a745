"""Exact and near-duplicate groups for the exploration report, and the closest pairs left apart.

The hashes and the grouping are `jaxcxr.data.lookalikes` (16x16 dHash, 256 bits; its docstring has
the measurements behind the default threshold of 8 bits), the same grouping the dataset builder
uses to keep look-alike films in one split; this module describes the groups (files, classes,
splits) and finds the closest pairs the threshold left apart.

The inventory these functions read is `jaxcxr.tools.explore.Inventory` (names, labels, content
hashes, perceptual hashes of every inspected image).
"""

import dataclasses

import numpy as np

from jaxcxr.data import lookalikes, sampling

DEFAULT_DUP_THRESHOLD = lookalikes.DEFAULT_THRESHOLD


def closest_pairs(
  nearest: np.ndarray, partner: np.ndarray, groups: list[list[int]], k: int = 6
) -> list[tuple[int, int, int]]:
  """The k closest pairs (i, j, distance), i < j, of images not already in one duplicate group."""
  group_of = {i: n for n, g in enumerate(groups) for i in g}
  pairs = set()
  for i, (d, j) in enumerate(zip(nearest.tolist(), partner.tolist(), strict=True)):
    if d >= 0 and (i not in group_of or group_of.get(j) != group_of[i]):
      pairs.add((min(i, j), max(i, j), d))
  return sorted(pairs, key=lambda p: (p[2], p[0]))[:k]


def describe_groups(
  inv, groups: list[list[int]], class_names, split_of: dict, notes: dict
) -> list[dict]:
  """Duplicate groups as {'kind', 'cross_split', 'cross_class', 'splits', 'classes', 'members'}.

  kind 'exact': all members have equal pixels; 'near': some differ (distance = hash bits from the
  first member). Splits are those prepare put the members in; left-out members are 'not used'.
  Sorted: cross-split groups first (leakage between splits), then cross-class, larger, by name.
  """
  out = []
  for g in groups:
    g = sorted(g, key=lambda i: inv.names[i])
    ref = g[0]
    members = [
      {
        'file': inv.names[i],
        'class': class_names[inv.labels[i]],
        'split': split_of.get(inv.names[i], 'not used'),
        'note': notes.get(inv.names[i], ''),
        'distance': lookalikes.hamming(inv.phash[i], inv.phash[ref]),
        'same_pixels_as_first': inv.content[i] == inv.content[ref],
      }
      for i in g
    ]
    used = sorted({m['split'] for m in members} - {'not used'}, key=sampling.SPLITS.index)
    classes = sorted({m['class'] for m in members}, key=list(class_names).index)
    out.append(
      {
        'kind': 'exact' if all(m['same_pixels_as_first'] for m in members) else 'near',
        'cross_split': len(used) > 1,
        'cross_class': len(classes) > 1,
        'splits': used,
        'classes': classes,
        'members': members,
        '_index': g,
      }
    )
  out.sort(
    key=lambda d: (
      not d['cross_split'],
      not d['cross_class'],
      -len(d['members']),
      d['members'][0]['file'],
    )
  )
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


def find_duplicates(
  inv, class_names, split_of: dict, notes: dict, threshold: int, *, progress: bool = False
) -> Duplicates:
  """Groups the inventory's exact and near duplicates and lists the closest pairs left apart."""
  raw_groups, nearest, partner = lookalikes.near_duplicates(
    inv.phash, inv.content, threshold, progress=progress
  )
  groups = describe_groups(inv, raw_groups, class_names, split_of, notes)
  pairs = [
    {
      'distance': d,
      'members': [
        {
          'file': inv.names[i],
          'class': class_names[inv.labels[i]],
          'split': split_of.get(inv.names[i], 'not used'),
        }
        for i in (a, b)
      ],
      '_index': (a, b),
    }
    for a, b, d in closest_pairs(nearest, partner, raw_groups)
  ]
  return Duplicates(groups, nearest, pairs, threshold)
