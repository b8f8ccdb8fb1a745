r"""A/B of the torch -> Flax weight layouts: one strided copy vs `weights.to_flax_layout` (blocks).

  python scripts/transpose_ab.py [--rounds 5]

One process, the two variants alternating on the same arrays (VGG-19's classifier layers, its
largest conv and a DenseNet-201 1x1 conv). Prints the median milliseconds of each, the speed-up,
whether the results are bitwise equal, and the load average.
"""

import argparse
import os
import statistics
import time

import numpy as np

from jaxcxr.models import vgg, weights


def _one_copy(array: np.ndarray, layout: str) -> np.ndarray:
  """The layouts as single strided copies (to_flax_layout before it copied in blocks)."""
  if layout == 'conv':
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if layout == 'dense':
    return np.ascontiguousarray(array.T)
  h, w = vgg.POOL_HW
  out_features, in_features = array.shape
  array = array.reshape(out_features, in_features // (h * w), h, w).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(array.reshape(out_features, in_features).T)


CASES = {
  'vgg19 classifier.0 (4096 x 25088)': ((4096, 25088), 'dense_nchw'),
  'vgg19 classifier.3 (4096 x 4096)': ((4096, 4096), 'dense'),
  'vgg19 classifier.6 (1000 x 4096)': ((1000, 4096), 'dense'),
  'vgg19 conv 512x512x3x3': ((512, 512, 3, 3), 'conv'),
  'densenet201 conv 128x1792x1x1': ((128, 1792, 1, 1), 'conv'),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f'load average at start: {os.getloadavg()[0]:.2f}')
  print('| weight | one copy (ms) | blocks (ms) | speed-up | bitwise equal |')
  print('|---|---|---|---|---|')
  for name, (shape, layout) in CASES.items():
    array = rng.standard_normal(shape, dtype=np.float32)
    times = {'one': [], 'blocks': []}
    equal = True
    for _ in range(args.rounds):
      t = time.perf_counter()
      a = _one_copy(array, layout)
      times['one'].append(time.perf_counter() - t)
      t = time.perf_counter()
      b = weights.to_flax_layout(array, layout)
      times['blocks'].append(time.perf_counter() - t)
      equal &= np.array_equal(a, b)
    one, blocks = (1e3 * statistics.median(times[k]) for k in ('one', 'blocks'))
    print(f'| {name} | {one:.1f} | {blocks:.1f} | {one / blocks:.1f}x | {equal} |')
  print(f'load average at end: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
