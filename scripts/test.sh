#!/usr/bin/env bash
# Installs the runtime, test and export dependencies, runs `ruff check` and `ruff format --check`
# (settings in pyproject.toml; a finding fails the script before any test runs), then runs the
# whole test suite on two pytest-xdist workers. Each test file (and tests/reliability as a whole)
# stays on one worker, so module and session fixtures are built once (tests/conftest.py); pass
# -n 0 to run serially.
# --no-loadscope-reorder: groups are handed out in tests/conftest.py's order, longest first (xdist
# would order them by test count, which put the longest groups last).
# (jax2onnx is installed with --no-deps: its metadata pins an old orbax-checkpoint that its
# converter never imports; see requirements-export.txt.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements-test.txt -r requirements-export.txt
python3 -m pip install -q --no-deps jax2onnx==0.17.1
python3 -m ruff check .
python3 -m ruff format --check .
# Bytecode caches on (some environments set PYTHONDONTWRITEBYTECODE): the suite starts ~100 Python
# processes, and without __pycache__ (gitignored) each compiles jaxcxr and the tests from source
# again (collection alone: 7.1 -> 4.9 s per worker).
unset PYTHONDONTWRITEBYTECODE
python3 -m pytest tests -q -n 2 --dist loadgroup --no-loadscope-reorder "$@"
