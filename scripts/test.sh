#!/usr/bin/env bash
# Installs the runtime, test and export dependencies, then runs the whole test suite.
# (jax2onnx is installed with --no-deps: its metadata pins an old orbax-checkpoint that its
# converter never imports; see requirements-export.txt.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements-test.txt -r requirements-export.txt
python3 -m pip install -q --no-deps jax2onnx==0.17.1
python3 -m pytest tests -q "$@"
