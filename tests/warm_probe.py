"""A command for tests/test_warm.py: prints what a run sees, then exits as asked.

python -m tests.warm_probe [exit STATUS | raise | sleep SECONDS]
"""

import json
import os
import sys
import time

import jax


def main(argv: list[str]) -> None:
  print(
    json.dumps(
      {
        'argv': argv,
        'cwd': os.getcwd(),
        'probe_env': os.environ.get('WARM_PROBE', ''),
        'devices': jax.device_count(),
        'path0': sys.path[0],
        'main': __name__,
      }
    )
  )
  print('to stderr', file=sys.stderr)
  if argv[1:2] == ['exit']:
    sys.exit(int(argv[2]))
  if argv[1:2] == ['raise']:
    raise RuntimeError('probe failure')
  if argv[1:2] == ['sleep']:
    time.sleep(float(argv[2]))


if __name__ == '__main__':
  main(sys.argv)
