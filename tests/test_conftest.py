"""The suite's own setup (tests/conftest.py)."""

from tests import conftest


def test_longest_first_names_existing_groups_once():
  """A renamed or deleted test file left in the list would silently lose its place."""
  groups = {conftest.xdist_group(p) for p in conftest.TESTS.rglob('test_*.py')}
  assert sorted(set(conftest.LONGEST_FIRST) - groups) == []
  assert len(set(conftest.LONGEST_FIRST)) == len(conftest.LONGEST_FIRST)
