"""Fixtures for the model tests."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _fast_rng_compile():
  """Partitionable threefry (jax's default) takes XLA:CPU ~20-50 s to compile per random shape
  here (a 1 s compile with it off), which would dominate every `model.init` in these tests. The
  models don't depend on the RNG implementation; the setting is restored after each test."""
  with jax.threefry_partitionable(False):
    yield
