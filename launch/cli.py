"""What every launcher shares: how it starts (library INFO logs off unless --verbosity/-v is
given; one-line errors for a mistyped --config key) and how it fails (`error: ...` on stderr and an
exit status from `jaxcxr.training.errors`).

  if __name__ == '__main__':
    cli.run(main)                  # or cli.run(main, flags_parser=...) for pass-through flags
"""

import ast
import gc
import logging
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags

from jaxcxr.training import errors, run_log


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, plus a one-line error for a mistyped --config.<key> (not a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # what absl's default parser prints
    print(
      f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.',
      file=sys.stderr,
    )
    sys.exit(errors.EXIT_FAILED)
  except (KeyError, AttributeError) as e:  # ml_collections: a field the locked config lacks
    text = str(e.args[0]) if e.args else str(e)
    if text[:1] in '"\'' and '\\n' in text:  # AttributeError wraps the KeyError's repr
      text = ast.literal_eval(text)
    key, _, hint = text.partition('\n')
    key = key.strip('"\'')
    flag = next(
      (
        a.split('=')[0]
        for a in argv[1:]
        if a.startswith('--config.') and f'.{key}' in a.split('=')[0]
      ),
      '--config',
    )
    print(
      f'FATAL Flags parsing error: {flag}: the config has no key {key!r}. {hint}'.rstrip(),
      file=sys.stderr,
    )
    sys.exit(errors.EXIT_FAILED)


def run(
  main: Callable[[list[str]], None], flags_parser: Callable[[list[str]], list[str]] | None = None
) -> None:
  """`app.run(main)`, quiet by default: `--verbosity=0` (INFO) or `1` (debug) shows library logs.

  Args:
    main: the launcher's main(argv).
    flags_parser: absl flags parser; default `parse_flags`.
  """

  def quiet_main(argv):
    run_log.quiet_library_logs(verbose=bool(flags.FLAGS['verbosity'].present))
    # What is alive now (the imported libraries, ~190k objects) lives as long as the process:
    # moved out of the cyclic garbage collector's reach, each full collection walks only what the
    # run makes (a tiny cold launch.train: 8.5 -> 7.8 s, docs/PERFORMANCE.md "Garbage collection").
    gc.freeze()
    return main(argv)

  app.run(quiet_main, flags_parser=flags_parser or parse_flags)


def fail(error, status: int = errors.EXIT_USAGE) -> NoReturn:
  """Prints `error: <message>` (the message names the file, key or value and the fix) and exits."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(status)


def fail_write(error: OSError) -> NoReturn:
  """A write failed (a full disk): the message, then exit status 74 with nothing printed after.

  After a failed write the other buffered writers fail again at exit: Orbax's write futures
  (asyncio logs each with a traceback, "exception was never retrieved") and TensorBoard's event
  thread and atexit flush. The message already reports the cause, so it stays the last line.
  """
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
  fail(error, errors.EXIT_IO_ERROR)
