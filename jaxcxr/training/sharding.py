"""Device mesh and shardings for data-parallel training under `jax.jit`.

One mesh axis, `data`, over every device of every process. Batches are split along it; parameters
are replicated (`P()`), or, with `param_sharding='fsdp'`, each large array is split along its first
dimension that the device count divides (ZeRO-3 style; XLA inserts the all-gathers).
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
# Arrays smaller than this stay replicated under FSDP: splitting them saves nothing.
_FSDP_MIN_SIZE = 2**14


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int) -> P:
  if int(np.prod(shape, dtype=np.int64)) < _FSDP_MIN_SIZE:
    return P()
  # Prefer the largest dimension that n divides.
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str = 'replicated') -> Any:
  """NamedShardings for every leaf of a (possibly abstract) train state.

  Args:
    abstract_state: pytree of arrays or `jax.ShapeDtypeStruct`s.
    mesh: the mesh from `make_mesh`.
    mode: 'replicated' or 'fsdp'.
  Returns:
    A pytree of `NamedSharding` with the structure of `abstract_state`.
  """
  if mode == 'replicated':
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  if mode == 'fsdp':
    n = mesh.shape[DATA_AXIS]
    return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(x)), n)), abstract_state
    )
  raise ValueError(f"param_sharding={mode!r}: expected 'replicated' or 'fsdp'.")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into one global `jax.Array` per key.

  Every process passes its own rows (`global_batch_size / process_count` of them); the result is
  sharded along the batch dimension over all devices of the mesh.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
