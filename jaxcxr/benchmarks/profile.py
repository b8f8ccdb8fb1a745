"""Per-op profile of the full jitted train step on XLA:CPU: where a step's time goes, by category.

`profile_train_step` compiles `jaxcxr.training.steps.train_step` for one architecture (as
`jaxcxr.benchmarks.common` does), runs a few steps under `jax.profiler.trace(...,
create_perfetto_trace=True)`, and joins the trace's per-thunk events (XLA:CPU names each thunk after
its HLO instruction) with the optimised HLO text of the same executable. Every instruction gets a
category from its opcode, the opcodes of the computation it calls (fusions), its output shape and
the `op_name` metadata JAX writes (`transpose(jvp(...))` marks the backward pass, and Flax module
paths such as `.../layer3_1/bn2/...` mark BatchNorm).

Shares are of the summed thunk time: thunks that run concurrently both count, so the sum can exceed
the wall time of the step. Shares are far less sensitive to other load on the machine than absolute
times; both are reported.
"""

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax

from jaxcxr import models
from jaxcxr.benchmarks import common as benchmark

# Ops that only move data: a fusion made of nothing else is a layout change (kernel reversal for
# the input gradient, NHWC <-> HWIO transposes for weight gradients, copies).
_LAYOUT_OPS = frozenset(
  {
    'copy',
    'transpose',
    'reverse',
    'bitcast',
    'parameter',
    'broadcast',
    'reshape',
    'constant',
    'iota',
    'tuple',
    'get-tuple-element',
  }
)
_BN_PATH = re.compile(r'/(bn\d*|norm\d*|downsample_1)/')
_CONV_PATH = re.compile(r'/(conv\d*|downsample_0|features_\d+)/')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(')
_COMP = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r'window=\{([^}]*)\}')
_DIMS = re.compile(r'\[([\d,]*)\]')


@dataclasses.dataclass
class HloOp:
  """One instruction of the optimised HLO module."""

  name: str
  opcode: str
  shape: tuple[int, ...]
  op_names: list[str]
  window: str
  calls: list[str]


def _dims(type_str: str) -> tuple[int, ...]:
  m = _DIMS.search(type_str)
  if not m or not m.group(1):
    return ()
  return tuple(int(d) for d in m.group(1).split(','))


def parse_hlo(text: str) -> tuple[dict[str, HloOp], dict[str, list[str]]]:
  """(instruction name -> HloOp, computation name -> its instruction names) of an HLO text."""
  ops: dict[str, HloOp] = {}
  comps: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m and current is not None:
      name, type_str, opcode = m.groups()
      ops[name] = HloOp(
        name,
        opcode,
        _dims(type_str),
        _OP_NAME.findall(line),
        (_WINDOW.search(line) or [None, ''])[1],
        _CALLS.findall(line),
      )
      comps[current].append(name)
      continue
    c = _COMP.match(line)
    if c and not line[:1].isspace():  # computation headers start in column 0
      current = c.group(1)
      comps[current] = []
    elif line.strip() == '}':
      current = None
  return ops, comps


def _inner(
  op: HloOp, ops: dict[str, HloOp], comps: dict[str, list[str]], depth: int = 0
) -> list[HloOp]:
  """The instructions of the computations `op` calls (fusion bodies), recursively."""
  out = []
  for comp in op.calls:
    for name in comps.get(comp, ()):
      child = ops[name]
      out.append(child)
      if depth < 4:
        out.extend(_inner(child, ops, comps, depth + 1))
  return out


def classify(
  op: HloOp, ops: dict[str, HloOp], comps: dict[str, list[str]], kernel_shapes: set[tuple[int, ...]]
) -> str:
  """Category of one executed instruction (see the module docstring)."""
  inner = _inner(op, ops, comps)
  members = [op] + inner
  # A fusion's own opcode says nothing; what it computes is in its body.
  opcodes = {o.opcode for o in (inner or [op])} - {'parameter'}
  names = [n for o in members for n in o.op_names]
  backward = any('transpose(' in n for n in names)
  convs = [o for o in members if o.opcode == 'convolution']
  if convs:
    conv = convs[0]
    dilated = 'lhs_dilate' in conv.window or 'rhs_dilate' in conv.window
    # XLA's conv canonicalisation drops the metadata of the weight-gradient convs it rewrites;
    # their output has the (permuted) shape of a kernel.
    if tuple(sorted(conv.shape)) in kernel_shapes and (backward or not names):
      return 'conv weight-grad' + (' (dilated)' if dilated else '')
    if not backward:
      return 'conv forward'
    return 'conv input-grad' + (' (dilated: strided conv)' if dilated else '')
  in_conv = any(_CONV_PATH.search(n) for n in names)
  if 'dot' in opcodes:
    if not in_conv:
      return 'dot (dense layers, matmuls)'
    # `jaxcxr.models.layers.conv2d` computes weight gradients as matmuls over im2col patches
    # (their product has a kernel's size), and on maps smaller than the kernel the forward and the
    # input gradient too.
    if not backward:
      return 'conv forward (im2col matmul)'
    sizes = {math.prod(s) for s in kernel_shapes}
    if any(math.prod(o.shape) in sizes for o in members if o.opcode == 'dot'):
      return 'conv weight-grad (im2col matmul)'
    return 'conv input-grad (matmul)'
  if opcodes & {'reduce-window', 'select-and-scatter'}:
    return 'pooling (fwd + bwd)'
  if opcodes <= _LAYOUT_OPS:
    return 'layout: transpose / reverse / copy'
  if names and not any('jvp(' in n for n in names):
    return 'optimizer, finite check, state select'
  if any(_BN_PATH.search(n) for n in names):
    # XLA fuses BatchNorm's backward with the transpose into the layout its weight-gradient
    # convolution wants ([C, H, W, N]): most of such a fusion's time is the transpose.
    if 'transpose' in opcodes:
      return 'BatchNorm fused with a layout transpose'
    return 'BatchNorm (fwd + bwd)'
  if in_conv and opcodes & {'concatenate', 'slice', 'pad'}:
    return 'conv weight-grad: im2col patches'
  if 'concatenate' in opcodes:
    return 'concatenate'
  if opcodes & {'slice', 'dynamic-slice', 'dynamic-update-slice', 'pad'}:
    return 'slice / pad'
  return 'other elementwise (ReLU, adds, loss)'


def _window(op: HloOp, ops: dict[str, HloOp], comps: dict[str, list[str]]) -> str:
  """The conv window of an op or of the conv inside its fusion ('' for non-convs)."""
  for o in [op] + _inner(op, ops, comps):
    if o.opcode == 'convolution':
      return o.window
  return ''


def perfetto_events(trace_dir: str) -> list[dict]:
  """Complete ('X') events of the perfetto trace `jax.profiler` wrote under `trace_dir`."""
  paths = glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(
      f'No perfetto_trace.json.gz under {trace_dir}: jax.profiler wrote no '
      'trace (is another profiler session active?).'
    )
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  return [e for e in events if e.get('ph') == 'X']


def summarise(
  events: Iterable[dict],
  ops: dict[str, HloOp],
  comps: dict[str, list[str]],
  kernel_shapes: set[tuple[int, ...]],
  steps: int,
) -> dict[str, Any]:
  """Per-category and per-op ms per step from trace events named after HLO instructions."""
  per_op = collections.Counter()
  for e in events:
    if e['name'] in ops:
      per_op[e['name']] += e.get('dur', 0.0) / 1e3 / steps  # us -> ms, per step
  per_cat = collections.Counter()
  cat_of = {}
  for name, ms in per_op.items():
    cat_of[name] = classify(ops[name], ops, comps, kernel_shapes)
    per_cat[cat_of[name]] += ms
  total = sum(per_op.values())
  top = [
    {
      'op': n,
      'category': cat_of[n],
      'ms': ms,
      'share': ms / total if total else 0.0,
      'shape': list(ops[n].shape),
      'window': _window(ops[n], ops, comps),
      'op_name': (ops[n].op_names or [''])[0],
    }
    for n, ms in per_op.most_common(25)
  ]
  return {
    'summed_op_ms': total,
    'ops_seen': len(per_op),
    'categories': [
      {'category': c, 'ms': ms, 'share': ms / total if total else 0.0}
      for c, ms in per_cat.most_common()
    ],
    'top_ops': top,
  }


def _kernel_shapes(params) -> set[tuple[int, ...]]:
  return {tuple(sorted(x.shape)) for x in jax.tree.leaves(params) if x.ndim == 4}


def profile_train_step(
  arch: str,
  image_size: int,
  batch_size: int,
  *,
  steps: int = 2,
  trace_dir: str = '',
  **overrides: Any,
) -> dict[str, Any]:
  """Profiles `steps` train steps of `arch` after one warm-up step.

  Args:
    arch: a `jaxcxr.models.NAMES` entry.
    image_size, batch_size: input side and batch.
    steps: traced steps (per-op times are averaged over them).
    trace_dir: where the trace goes (default: a temporary folder, deleted afterwards).
    **overrides: model options (e.g. `memory_efficient=True`, `dtype=jnp.bfloat16`).

  Returns:
    {'arch', 'step_ms' (median wall time of the traced steps), 'compile_s', 'summed_op_ms',
    'categories': [{category, ms, share}], 'top_ops': [...], 'loadavg': (before, after)}.
  """
  module = models.build(arch, benchmark.NUM_CLASSES, **overrides)
  state = benchmark.make_state(module, image_size)
  batch = benchmark.random_batch(batch_size, image_size)
  key = jax.random.key(0)
  dtype = overrides.get('dtype')
  compiled, timings = benchmark.compile_train_step(module, state, batch, key, dtype=dtype)
  ops, comps = parse_hlo(compiled.as_text())
  kernels = _kernel_shapes(state.params)
  state, metrics = compiled(state, batch, key)  # warm-up
  jax.block_until_ready(metrics)
  load_before = os.getloadavg()[0]
  walls = []
  with tempfile.TemporaryDirectory(prefix='jaxcxr_trace_') as tmp:
    out_dir = trace_dir or tmp
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
      for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - t)
    events = perfetto_events(out_dir)
  walls.sort()
  result = summarise(events, ops, comps, kernels, steps)
  return {
    'arch': arch,
    'image_size': image_size,
    'batch': batch_size,
    'steps': steps,
    'step_ms': 1e3 * walls[len(walls) // 2],
    'compile_s': timings['compile_s'],
    'loadavg': (load_before, os.getloadavg()[0]),
    **overrides_json(overrides),
    **result,
  }


def overrides_json(overrides: dict) -> dict:
  """Model overrides as JSON-friendly values (dtypes by name)."""
  return {k: (str(jax.numpy.dtype(v)) if k == 'dtype' else v) for k, v in overrides.items()}


def format_profile(result: dict) -> str:
  """Markdown: categories (ms/step and share), then the top ops with their shapes."""
  lines = [
    f'### {result["arch"]} train step, {result["image_size"]} px, batch '
    f'{result["batch"]}: {result["step_ms"]:.0f} ms/step wall, '
    f'{result["summed_op_ms"]:.0f} ms summed op time, load '
    f'{result["loadavg"][0]:.1f} -> {result["loadavg"][1]:.1f}',
    '',
    '| category | ms/step | share |',
    '|---|---|---|',
  ]
  lines += [
    f'| {c["category"]} | {c["ms"]:.1f} | {100 * c["share"]:.1f}% |' for c in result['categories']
  ]
  lines += [
    '',
    '| op | category | ms/step | share | output shape | window |',
    '|---|---|---|---|---|---|',
  ]
  lines += [
    f'| {o["op"]} | {o["category"]} | {o["ms"]:.1f} | {100 * o["share"]:.1f}% | '
    f'{"x".join(map(str, o["shape"]))} | {o["window"]} |'
    for o in result['top_ops'][:15]
  ]
  return '\n'.join(lines)


def profile_main(
  archs: Sequence[str],
  *,
  image_size: int,
  batch: int,
  dtypes: Sequence[str],
  out: str,
  steps: int = 2,
) -> int:
  """`launch.benchmark --profile`: one profile per arch and dtype, printed and written as JSON."""
  results = []
  for spec in archs:
    name, _, suffix = spec.partition(':')
    overrides = {'memory_efficient': True} if suffix == 'me' else {}
    for dtype in dtypes:
      extra = {} if dtype == 'float32' else {'dtype': jax.numpy.dtype(dtype)}
      r = profile_train_step(name, image_size, batch, steps=steps, **overrides, **extra)
      r['arch'] = spec
      print(format_profile(r) + '\n', flush=True)
      results.append(r)
  benchmark.write_json(out, results)
  return 0
