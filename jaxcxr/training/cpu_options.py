"""`config.model.cpu_ynn_fusion`: XLA:CPU compiler options of the train and eval steps.

`xla_cpu_experimental_ynn_fusion_type` (dot, eltwise, reduce) lets XLA:CPU put elementwise ops and
reductions into the YNNPACK fusions of the dots and convolutions next to them. It is a trade-off by
model, hence a config key and not a default. Measured again under jaxlib 0.12.0.1 on an idle 2-core
AMD EPYC (docs/PERFORMANCE.md, 2026-12-04; one process, the compiled train steps alternating,
128 px, batch 16): resnet101 6.49 -> 3.81 s per step (1.70x; 1.79x under jaxlib 0.10), resnet18
1.05 -> 0.95 s (1.11x), the CPU recipe's cnn_res18_half (112 px, batch 32) 0.52 -> 0.53 s (1 %
slower). On in configs/resnet101.py.

`OPTIONS['onednn']` (`xla_cpu_experimental_onednn_custom_call`, new in jaxlib 0.12: oneDNN
convolutions as custom calls) is there for the benchmarks' A/Bs (`launch.benchmark --option_ab
--variants=base,onednn`): alone it was 0-5 % faster on every model measured, not enough for a key.

The options go to `jax.jit(..., compiler_options=...)` of the steps, so they need no XLA_FLAGS and
touch nothing else in the process. They are given only on a CPU backend and for a jaxlib known
to have the option (`TESTED_JAXLIB`): XLA rejects an unknown option.
"""

import importlib.metadata

import jax

YNN_FUSION = {
  'xla_cpu_experimental_ynn_fusion_type': (
    'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE'
  )
}
OPTIONS = {
  'ynn': YNN_FUSION,
  # oneDNN convolutions (forward and both gradients) as custom calls
  'onednn': {'xla_cpu_experimental_onednn_custom_call': True},
}
TESTED_JAXLIB = ('0.12.',)  # jaxlib versions whose XLA has the options (measured on)


# A program that runs once per run (the train state's random init) compiles at LLVM -O0 on CPU: its
# compile is what a run start pays, and -O0 compiles it 3-5x faster for a few hundred ms more run
# time (scripts/init_compile_ab.py; docs/PERFORMANCE.md). The values agree to float32 round-off,
# not bitwise (the normal draws' arithmetic is compiled differently).
RUN_ONCE = {'xla_backend_optimization_level': 0}


def run_once_options(backend: str | None = None) -> dict[str, int] | None:
  """`compiler_options` of a program that runs once per run: RUN_ONCE on CPU, else None."""
  return dict(RUN_ONCE) if (backend or jax.default_backend()) == 'cpu' else None


def compiler_options(
  ynn_fusion: bool, backend: str | None = None, jaxlib_version: str | None = None
) -> dict[str, str] | None:
  """The jitted steps' `compiler_options`: YNN_FUSION when asked for and applicable, else None.

  Args:
    ynn_fusion: `config.model.cpu_ynn_fusion`.
    backend: default `jax.default_backend()`; other than 'cpu' gives None.
    jaxlib_version: default the installed one; not a TESTED_JAXLIB version gives None.
  """
  backend = backend or jax.default_backend()
  jaxlib_version = jaxlib_version or importlib.metadata.version('jaxlib')
  if not ynn_fusion or backend != 'cpu' or not jaxlib_version.startswith(TESTED_JAXLIB):
    return None
  return dict(YNN_FUSION)
