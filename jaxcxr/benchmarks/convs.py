"""Per-convolution probe: GFLOP/s of XLA:CPU's forward, input-gradient and weight-gradient convs.

Why this exists (docs/PERFORMANCE.md): on XLA:CPU the forward conv and the input gradient run at
~20-25 GFLOP/s on this 2-core machine, but the weight gradient (a conv whose "window" is the whole
feature map, batch as the contracted feature) runs at ~1 GFLOP/s, and it is a third of a train
step's FLOPs. `tap_matmul_weight_grad` is the same weight gradient written as one matmul per kernel
tap over (N*H*W); the probe times both so the gap is reproducible.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ('NHWC', 'HWIO', 'NHWC')

# (batch, side, in_channels, out_channels, kernel): stride-1 'same' convs of the models at 128 px.
SHAPES = (
  (16, 32, 128, 128, 3),  # VGG19 block-2 scale / ResNet layer1 / DenseNet block1 at 32x32
  (16, 32, 256, 64, 1),  # ResNet bottleneck 1x1 at 32x32
  (16, 16, 128, 32, 3),  # DenseNet dense layer 3x3 (bn_size*growth -> growth) at 16x16
)


def _conv(x, w):
  p = (w.shape[0] - 1) // 2
  return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN)


def tap_matmul_weight_grad(x: jax.Array, g: jax.Array, kernel: int) -> jax.Array:
  """dL/dW (k, k, C, O) of a stride-1 'same' conv as k*k matmuls (C, NHW) @ (NHW, O)."""
  p = (kernel - 1) // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  _, h, w, _ = g.shape
  return jnp.stack(
    [
      jnp.stack(
        [jnp.einsum('nhwc,nhwo->co', xp[:, i : i + h, j : j + w, :], g) for j in range(kernel)]
      )
      for i in range(kernel)
    ]
  )


def _median_ms(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def probe(shapes=SHAPES, steps: int = 3) -> list[dict]:
  """Per shape: ms and GFLOP/s of fwd, dx, XLA's dW and the tap-matmul dW (and their max diff)."""
  rows = []
  for n, s, c, o, k in shapes:
    x = jax.random.normal(jax.random.key(0), (n, s, s, c), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (k, k, c, o), jnp.float32) * 0.05
    g = jax.random.normal(jax.random.key(2), (n, s, s, o), jnp.float32)
    fwd = jax.jit(_conv)
    dx = jax.jit(lambda g, x=x, w=w: jax.vjp(_conv, x, w)[1](g)[0])
    dw = jax.jit(lambda g, x=x, w=w: jax.vjp(_conv, x, w)[1](g)[1])
    dw_tap = jax.jit(lambda g, x=x, k=k: tap_matmul_weight_grad(x, g, k))
    gflop = 2.0 * n * s * s * c * o * k * k / 1e9
    ms = {
      'fwd': _median_ms(fwd, x, w, steps=steps),
      'dx': _median_ms(dx, g, steps=steps),
      'dw_xla': _median_ms(dw, g, steps=steps),
      'dw_tap': _median_ms(dw_tap, g, steps=steps),
    }
    ref = dw(g)
    rel = float(jnp.max(jnp.abs(dw_tap(g) - ref)) / jnp.max(jnp.abs(ref)))
    rows.append(
      {
        'shape': (n, s, c, o, k),
        'gflop': gflop,
        'dw_tap_rel_diff': rel,
        **{f'{key}_ms': v for key, v in ms.items()},
        **{f'{key}_gflop_s': gflop / (v / 1e3) for key, v in ms.items()},
      }
    )
  return rows


def probe_main(steps: int) -> int:
  """`launch.benchmark --conv_probe`: the per-shape table on stdout."""
  print(f'load average {os.getloadavg()[0]:.2f}')
  print(
    '| (N, S, Cin, Cout, k) | GFLOP | fwd | dx | dW (XLA) | dW (tap matmuls) | '
    'GFLOP/s fwd/dx/dW/tap |'
  )
  print('|---|---|---|---|---|---|---|')
  for r in probe(steps=steps):
    print(
      f'| {r["shape"]} | {r["gflop"]:.1f} | {r["fwd_ms"]:.0f} ms | {r["dx_ms"]:.0f} ms | '
      f'{r["dw_xla_ms"]:.0f} ms | {r["dw_tap_ms"]:.0f} ms | {r["fwd_gflop_s"]:.1f} / '
      f'{r["dx_gflop_s"]:.1f} / {r["dw_xla_gflop_s"]:.1f} / {r["dw_tap_gflop_s"]:.1f} |'
    )
  return 0
