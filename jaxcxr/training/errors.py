"""Exceptions of a training run and the process exit statuses the launchers map them to.

The one home of these numbers: `launch/*.py`, the sweep runner and the tests import them from here.
"""

EXIT_FAILED = 1  # bad flags; an unexpected error (traceback); some inputs or sweep trials
# failed, each listed (launch.predict, gradcam, sweep)
EXIT_USAGE = 2  # bad flags, config or input: the message says what to fix
EXIT_IO_ERROR = 74  # EX_IOERR: a write failed (full disk, read-only filesystem)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM, checkpoint written; re-run the same command to resume


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/inf; the last good checkpoint is left intact."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written. Re-run the same command to resume."""


class WorkdirInUse(ValueError):
  """Another live run holds the workdir (`workdir_lock`); the message names its host and pid."""
