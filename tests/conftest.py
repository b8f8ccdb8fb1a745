"""Suite-wide setup: how pytest-xdist may split the suite (scripts/test.sh runs `-n 2 --dist
loadgroup`).

Each test file is one xdist group, so its module-scoped fixtures (a prepared dataset, a trained
workdir, a batch of CLI runs) are built once, on the worker that runs the file. tests/reliability
is one group as a whole: its session fixtures (the prepared data, the reference training run, the
compile cache) are shared by all its files and must not be built once per worker. Without xdist
the marks do nothing.
"""

import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent


def xdist_group(path: pathlib.Path) -> str:
  """The group of a test file: 'reliability' for tests/reliability/*, else its path."""
  rel = path.resolve().relative_to(TESTS)
  return 'reliability' if rel.parts[0] == 'reliability' else rel.as_posix()


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))
