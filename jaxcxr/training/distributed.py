"""Process start-up: `jax.distributed.initialize()` when asked for, and the compilation cache."""

import os

import jax


def maybe_initialize() -> bool:
  """Initialises jax.distributed when JAXCXR_DISTRIBUTED=1 or a cluster is detected.

  With JAXCXR_COORDINATOR (host:port), JAXCXR_NUM_PROCESSES and JAXCXR_PROCESS_ID set, those are
  used explicitly (e.g. several processes on one machine); otherwise JAX auto-detects the cluster
  (TPU pod slices, SLURM, Open MPI). On CPU the gloo collectives are selected.

  Returns:
    True when jax.distributed was initialised.
  """
  explicit = 'JAXCXR_COORDINATOR' in os.environ
  if not (explicit or os.environ.get('JAXCXR_DISTRIBUTED') == '1'):
    return False
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu' or os.environ.get('JAXCXR_CPU_COLLECTIVES'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(
      coordinator_address=os.environ['JAXCXR_COORDINATOR'],
      num_processes=int(os.environ['JAXCXR_NUM_PROCESSES']),
      process_id=int(os.environ['JAXCXR_PROCESS_ID']),
    )
  else:
    jax.distributed.initialize()
  return True


def enable_compilation_cache(path: str, min_compile_secs: float = 1.0) -> None:
  """Turns on JAX's persistent compilation cache at `path` ('' leaves it off).

  Compiles slower than `min_compile_secs` are stored, so re-running or resuming the same config
  (same shapes, same device kind) loads the executable instead of compiling again.
  """
  if not path:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', min_compile_secs)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
