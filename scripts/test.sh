#!/usr/bin/env bash
# Installs the runtime, test and export dependencies, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements-test.txt
if [ -f requirements-export.txt ]; then
  python3 -m pip install -q -r requirements-export.txt
fi
python3 -m pytest tests -q "$@"
