"""`config.model.cpu_ynn_fusion`: an XLA:CPU flag a training run may start with.

`--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce` lets XLA:CPU put elementwise ops and
reductions into the YNNPACK fusions of the dots and convolutions next to them. Measured idle on a
2-core Xeon, 128 px, batch 16, float32, one binary A/B (docs/PERFORMANCE.md), it is a trade-off
by model, hence a config key and not a default: train steps resnet101 1.91x, densenet201 1.13x,
resnet18 1.06x faster, but the small CPU recipe model (cnn_res18_half, 112 px, batch 32) 0.83x and
vgg19 0.92x. torchvision parity, the ONNX export and the gradient tests pass under it.

XLA reads XLA_FLAGS once, when the first backend starts, and an unknown flag aborts the process.
So `apply()` runs at the start of `launch.train`, before any computation; it adds the flag only
for a jaxlib known to have it (`TESTED_JAXLIB`), never over a value the user set in XLA_FLAGS, and
only touches the host CPU compiler on GPU / TPU hosts.
"""

import importlib.metadata
import os

from jax._src import xla_bridge

YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce'
TESTED_JAXLIB = ('0.10.',)   # jaxlib versions whose XLA has YNN_FUSION_FLAG


def with_flag(xla_flags: str, flag: str, jaxlib_version: str) -> str:
  """`xla_flags` plus `flag` unless a flag of that name is set or the jaxlib is not a tested one."""
  flags = xla_flags.split()
  name = flag.split('=')[0]
  if not jaxlib_version.startswith(TESTED_JAXLIB) or any(f.split('=')[0] == name for f in flags):
    return xla_flags
  return ' '.join(flags + [flag])


def apply(ynn_fusion: bool) -> bool:
  """With `ynn_fusion`, adds YNN_FUSION_FLAG to os.environ['XLA_FLAGS'] before the backend starts.

  Returns:
    True when XLA_FLAGS now sets the fusion types (ours or the user's); False when not asked, the
    jaxlib is not a tested one, or a backend already started (XLA would ignore a change now).
  """
  if not ynn_fusion or xla_bridge.backends_are_initialized():
    return False
  flags = with_flag(os.environ.get('XLA_FLAGS', ''), YNN_FUSION_FLAG,
                    importlib.metadata.version('jaxlib'))
  os.environ['XLA_FLAGS'] = flags
  return YNN_FUSION_FLAG.split('=')[0] in flags
