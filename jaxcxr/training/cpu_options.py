"""`config.model.cpu_ynn_fusion`: XLA:CPU compiler options of the train and eval steps.

`xla_cpu_experimental_ynn_fusion_type` (dot, eltwise, reduce) lets XLA:CPU put elementwise ops and
reductions into the YNNPACK fusions of the dots and convolutions next to them. It is a trade-off by
model, hence a config key and not a default. Measured idle on a 2-core Xeon (docs/PERFORMANCE.md;
in one process, the two compiled train steps alternating): resnet101 at 128 px, batch 16: 4.80 ->
2.68 s per step (1.79x); densenet201 2.99 -> 3.05 s, resnet18 0.84 -> 0.88 s and the CPU recipe's
cnn_res18_half (112 px, batch 32) 0.50 -> 0.53 s, i.e. 2-6 % slower. torchvision parity, the ONNX
export and the gradient tests passed under the same option set through XLA_FLAGS (2026-11-30).

The options go to `jax.jit(..., compiler_options=...)` of the steps, so they need no XLA_FLAGS and
touch nothing else in the process. They are given only on a CPU backend and for a jaxlib known
to have the option (`TESTED_JAXLIB`): XLA rejects an unknown option.
"""

import importlib.metadata
from typing import Optional

import jax

YNN_FUSION = {'xla_cpu_experimental_ynn_fusion_type':
              'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE'}
TESTED_JAXLIB = ('0.10.',)   # jaxlib versions whose XLA has the option


def compiler_options(ynn_fusion: bool, backend: Optional[str] = None,
                     jaxlib_version: Optional[str] = None) -> Optional[dict[str, str]]:
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
