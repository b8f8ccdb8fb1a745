"""launch.benchmark_dicom's machinery on small films (its numbers are figures, not tested)."""

import numpy as np
import pytest

from jaxcxr.benchmarks import dicom as bench
from jaxcxr.data import dicom, images


@pytest.mark.parametrize('name', list(bench.FILMS))
def test_each_film_encodes_and_reads_back(name):
  _, bits, syntax = bench.FILMS[name]
  grey = bench.chest_film(64)
  data = bench.encode(grey, bits, syntax)
  got = images.decode_grey(data, name=name)
  diff = np.abs(got.astype(int) - grey)
  # Deep films are windowed over their full range: within one level; lossy ones close.
  assert diff.max() <= (1 if 'lossy' not in name and 'jpeg_baseline' not in name else 24), name
  m = bench.measure(data, repeats=1)
  assert m['wall_ms'] > 0 and m['traced_mb'] > 0


def test_main_prints_a_row_per_film(capsys, monkeypatch):
  monkeypatch.setattr(bench, 'FILMS', {k: (64, *v[1:]) for k, v in bench.FILMS.items()})
  assert bench.dicom_main(repeats=1) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in bench.FILMS) and 'load average' in out


def test_timed_sums_the_wrapped_calls():
  grey = bench.chest_film(32)
  data = bench.encode(grey, 8, '1.2.840.10008.1.2.1')
  with bench.timed(dicom, 'read_film') as total:
    for _ in range(3):
      images.decode_grey(data, name='x')
  assert total[0] > 0 and dicom.read_film.__name__ == 'read_film'  # restored
