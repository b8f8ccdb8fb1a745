"""The layering of docs/ARCHITECTURE.md, enforced: imports only point down, no cycles, no hidden
(function-level) imports of jaxcxr modules.

Layers, bottom to top: `jaxcxr` (constants) < `jaxcxr.models`, `jaxcxr.data` < `jaxcxr.training`
< `jaxcxr.evaluation` < `jaxcxr.tools` < `launch`. A module may import its own package and any
lower layer; `models` and `data` are independent of each other.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RANK = {
  'jaxcxr': 0,
  'jaxcxr.models': 1,
  'jaxcxr.data': 1,
  'jaxcxr.training': 2,
  'jaxcxr.evaluation': 3,
  'jaxcxr.tools': 4,
  'jaxcxr.benchmarks': 4,
  'launch': 5,
}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _layer(module: str) -> str:
  parts = module.split('.')
  if parts[0] == 'launch':
    return 'launch'
  if len(parts) >= 2 and '.'.join(parts[:2]) in RANK:
    return '.'.join(parts[:2])
  return 'jaxcxr'


def _imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(imported jaxcxr module, line, at module level) of every import in a file."""
  tree = ast.parse(path.read_text(), str(path))
  top = {id(n) for n in tree.body}
  for node in tree.body:  # imports under a module-level `if`/`try` still count as module level
    if isinstance(node, (ast.If, ast.Try)):
      top |= {id(n) for n in ast.walk(node)}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from jaxcxr.x import y` imports the submodule jaxcxr.x.y, or a name of jaxcxr.x
      # (`_known` resolves either to the longest existing module).
      names = [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    for name in names:
      if name.split('.')[0] in ('jaxcxr', 'launch'):
        out.append((name, node.lineno, id(node) in top))
  return out


def _known(name: str, modules: set[str]) -> str | None:
  """The module (or package) an import name refers to, if it is ours."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def _sources(root: pathlib.Path = REPO) -> dict[str, pathlib.Path]:
  files = sorted((root / 'jaxcxr').rglob('*.py')) + sorted((root / 'launch').glob('*.py'))
  return {_module_name(p, root): p for p in files}


def upward_imports(root: pathlib.Path = REPO) -> list[str]:
  sources = _sources(root)
  upward = []
  for module, path in sources.items():
    me = _layer(module)
    for name, line, _ in _imports(path):
      target = _known(name, set(sources))
      if target is None:
        continue
      them = _layer(target)
      if them == me:
        continue
      if RANK[them] >= RANK[me]:
        upward.append(f'{path.relative_to(root)}:{line} ({me}) imports {target} ({them})')
  return sorted(set(upward))


def hidden_imports(root: pathlib.Path = REPO) -> list[str]:
  return [
    f'{path.relative_to(root)}:{line} imports {name} inside a function'
    for path in _sources(root).values()
    for name, line, top in _imports(path)
    if not top
  ]


def test_imports_only_point_down():
  upward = upward_imports()
  assert not upward, 'Imports that point up or sideways:\n' + '\n'.join(upward)


def test_no_function_level_imports_of_jaxcxr():
  hidden = hidden_imports()
  assert not hidden, '\n'.join(hidden)


def test_no_import_cycles():
  sources = _sources()
  graph = {m: set() for m in sources}
  for module, path in sources.items():
    for name, _, _ in _imports(path):
      target = _known(name, set(sources))
      # A package's __init__ is imported on the way to any of its modules: ignore that edge.
      if target and target != module and not module.startswith(target + '.'):
        graph[module].add(target)
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        pytest.fail('Import cycle: ' + ' -> '.join(stack[stack.index(n) :] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_checker_sees_upward_and_hidden_imports(tmp_path):
  """The checks themselves: a training module importing evaluation, and a data module importing
  models inside a function, are both reported; a downward import is not."""
  for name, text in {
    'jaxcxr/__init__.py': '',
    'jaxcxr/data/__init__.py': '',
    'jaxcxr/data/ok.py': 'import numpy\n',
    'jaxcxr/models/__init__.py': '',
    'jaxcxr/evaluation/__init__.py': '',
    'jaxcxr/evaluation/report.py': 'from jaxcxr.training import bad\n',
    'jaxcxr/training/__init__.py': '',
    'jaxcxr/training/bad.py': (
      'from jaxcxr.data import ok\nfrom jaxcxr.evaluation import report\n'
      '\ndef f():\n  from jaxcxr import models\n'
    ),
  }.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  upward = upward_imports(tmp_path)
  assert len(upward) == 1 and 'training/bad.py:2' in upward[0], upward
  hidden = hidden_imports(tmp_path)
  assert len(hidden) == 1 and 'training/bad.py:5 imports jaxcxr.models' in hidden[0], hidden


_NO_TORCH = """
import sys, tempfile
import launch.train
from jaxcxr.evaluation import gradcam, inference, report
from jaxcxr.training import run_log
log = run_log.RunLog(tempfile.mkdtemp(), total_steps=1)
log.write('train', 1, {'loss': 1.0})
log.close()
assert log._tb is not None, 'no TensorBoard writer'
print('torch loaded:', 'torch' in sys.modules)
"""


_SLOW_IMPORTS = ('sklearn', 'matplotlib', 'scipy', 'torch')


def test_clis_start_without_the_slow_libraries():
  """scikit-learn, matplotlib and scipy are imported where they are used (metrics, figures), not
  at start-up: they were 2.2 s of launch.train's 5.5 s start, paid even by a mistyped flag. (Every
  jaxcxr module is imported: the launchers are thin layers over them.)"""
  code = (
    'import importlib, pkgutil, sys, jaxcxr, launch.train\n'
    "for m in pkgutil.walk_packages(jaxcxr.__path__, 'jaxcxr.'):\n"
    '  importlib.import_module(m.name)\n'
    f'print(sorted(m for m in {_SLOW_IMPORTS} if m in sys.modules))'
  )
  r = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    timeout=300,
    check=False,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == '[]', r.stdout


def test_training_and_its_tensorboard_writer_do_not_load_torch():
  """torch is a test/conversion dependency: the training and evaluation CLIs never load it, not
  even through tensorboardX (which imports torch whenever it is installed)."""
  r = subprocess.run(
    [sys.executable, '-c', _NO_TORCH],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    timeout=300,
    check=False,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == 'torch loaded: False', r.stdout
