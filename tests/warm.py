"""Warm starts for the suite's command runs: `python -m launch.<x> ...` forked from a process that
has already imported the libraries, as multiprocessing's forkserver does for its workers.

A cold `python -m launch.train` spends ~2.8 s importing before it reads a flag (jax, flax, Orbax,
Grain, TFDS, pydicom and jaxcxr: 1.7 s; scikit-learn with scipy: 0.8 s; matplotlib: 0.3 s), ~40 %
of a tiny run; the suite starts ~100 such runs. `run_module` asks a server (one per pytest
process, started on first use) that imported all of them once to fork a child for the run.

What stays the same as `python -m`: the child runs the module as `__main__` (runpy, as `-m` does)
with the run's own argv, environment, working directory and stdio (fresh pipes, stdin from
/dev/null), and ends through the interpreter's normal exit (atexit handlers, non-daemon threads
joined) with the exit status `python -m` gives, a traceback included. The server never starts a
jax backend (checked before it serves), so each run's XLA_FLAGS (device count, optimisation level)
apply at the child's first jax call.

What differs: nothing is imported anew, so a child does not pay, or print, what importing does.
Tests about start-up itself (which libraries load, every line a command prints, pids, signals)
start `sys.executable` directly. JAXCXR_TEST_COLD=1 makes `run_module` start every command cold
(a whole-suite check that warm and cold runs agree).

  python -m tests.warm serve SOCKET     # the server (run_module starts it)
"""

import contextlib
import importlib
import io
import json
import os
import pkgutil
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

# Imported by the server before it forks: what the launchers import at start-up and what a run
# imports later (metrics, figures, DICOM decoders).
PRELOAD = (
  'jax',
  'jax.numpy',
  'flax.linen',
  'optax',
  'orbax.checkpoint',
  'grain',
  'tensorflow_datasets',
  'absl.app',
  'ml_collections.config_flags',
  'sklearn.metrics',
  'matplotlib.figure',
  'matplotlib.backends.backend_agg',
  'pydicom',
  'jaxcxr',
)
_COLD_ENV = 'JAXCXR_TEST_COLD'
_MAX_MESSAGE = 1 << 20


def _preload() -> None:
  for name in PRELOAD:
    importlib.import_module(name)
  for m in pkgutil.walk_packages(sys.modules['jaxcxr'].__path__, 'jaxcxr.'):
    importlib.import_module(m.name)
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  # A backend made here would be shared by every child (one device count, forked thread pools).
  assert not xla_bridge._backends, 'the warm server must not start a jax backend'  # pylint: disable=protected-access
  # Python threads would not exist in a child; the native pools started by importing numpy and
  # scipy (OpenBLAS) and cv2 (OpenCV) are remade after a fork (checked: warpAffine, a matmul and
  # scipy.linalg.inv in a forked child).
  assert threading.active_count() == 1, 'the warm server must fork from its only Python thread'
  # A cold command never loads torch (tests/test_architecture.py); nor may a warm one.
  assert 'torch' not in sys.modules, 'the warm server imported torch'


def _child(request: dict, fds: list[int]) -> None:
  """In the forked child: becomes `python -m <module> <args>` and returns to exit like it."""
  signal.set_wakeup_fd(-1)
  signal.signal(signal.SIGCHLD, signal.SIG_DFL)
  signal.signal(signal.SIGINT, signal.default_int_handler)
  for target, fd in enumerate(fds):
    os.dup2(fd, target)
    os.close(fd)
  os.chdir(request['cwd'])
  os.environ.clear()
  os.environ.update(request['env'])
  sys.path[0] = request['cwd']  # `python -m` puts the working directory first
  sys.argv = ['-m', *request['args']]
  runpy.run_module(request['module'], run_name='__main__', alter_sys=True)


def serve(path: str) -> None:
  """Preloads, then forks one child per request until its stdin closes (the test process ended)."""
  _preload()
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
  listener.bind(path)
  listener.listen(64)
  wake_r, wake_w = os.pipe()
  os.set_blocking(wake_w, False)
  signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
  signal.signal(signal.SIGCHLD, lambda *_: None)
  sel = selectors.DefaultSelector()
  sel.register(listener, selectors.EVENT_READ)
  sel.register(wake_r, selectors.EVENT_READ)
  sel.register(sys.stdin, selectors.EVENT_READ)
  print('ready', flush=True)
  waiting = {}  # child pid -> the client's connection
  while True:
    for key, _ in sel.select():
      if key.fileobj is sys.stdin:
        if not os.read(sys.stdin.fileno(), 4096):
          os.unlink(path)
          return
      elif key.fileobj is listener:
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 3)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
          sel.close()
          listener.close()
          conn.close()
          for fd in (wake_r, wake_w):
            os.close(fd)
          for c in waiting.values():
            c.close()
          _child(json.loads(message), fds)
          return  # the child's interpreter exits as `python -m` would
        for fd in fds:
          os.close(fd)
        with contextlib.suppress(OSError):
          conn.send(json.dumps({'pid': pid}).encode())
        waiting[pid] = conn
      else:
        os.read(wake_r, 4096)
    while waiting:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if not pid:
        break
      conn = waiting.pop(pid)
      with contextlib.suppress(OSError):  # the client may have gone (a timeout killed the run)
        conn.send(json.dumps({'status': os.waitstatus_to_exitcode(status)}).encode())
      conn.close()


class _Server:
  """The server of this process: started on first use, ends when this process does."""

  def __init__(self, env: dict, cwd: str):
    self.path = os.path.join(
      os.environ.get('TMPDIR', '/tmp'), f'jaxcxr-warm-{os.getpid()}-{time.monotonic_ns()}.sock'
    )
    self.proc = subprocess.Popen(
      [sys.executable, '-m', 'tests.warm', 'serve', self.path],
      cwd=cwd,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
    )
    line = self.proc.stdout.readline()
    if line.strip() != b'ready':
      raise RuntimeError(f'the warm server did not start (exit {self.proc.wait()})')


_SERVERS: list[_Server] = []  # this process's server (the last one; a new one if it ended)
_SERVER_LOCK = threading.Lock()  # runs may start from several threads


def _server_path(env: dict, cwd: str) -> str:
  with _SERVER_LOCK:
    if not _SERVERS or _SERVERS[-1].proc.poll() is not None:
      _SERVERS.append(_Server(env, cwd))
    return _SERVERS[-1].path


def _command(module: str, args) -> list[str]:
  """The `python -m module args` argv (args as strings)."""
  return [sys.executable, '-m', module, *[str(a) for a in args]]


def _decode(data: bytes) -> str:
  """As subprocess.run(text=True) decodes: universal newlines."""
  return io.TextIOWrapper(io.BytesIO(data), encoding='utf-8', errors='replace').read()


def _write_fd(stream, pipes: list[int]) -> int:
  """The child's descriptor for `stream`: a new pipe (PIPE: its read end goes to `pipes`),
  /dev/null (DEVNULL or None) or a copy of a file's own."""
  if stream == subprocess.PIPE:
    r, w = os.pipe()
    pipes.append(r)
    return w
  if stream in (None, subprocess.DEVNULL):
    return os.open(os.devnull, os.O_WRONLY)
  return os.dup(stream if isinstance(stream, int) else stream.fileno())


class Popen:
  """`subprocess.Popen([sys.executable, '-m', module, *args], text=True, ...)` forked from the
  warm server. `pid` is the command's own process (signals go straight to it); `poll`, `wait`,
  `communicate`, `send_signal`, `terminate`, `kill` and `returncode` behave as Popen's.

  stdout: PIPE, DEVNULL (or None) or a file; stderr: the same, or STDOUT. stdin is /dev/null.
  """

  def __init__(self, module: str, args, *, env: dict, cwd, stdout=None, stderr=None):
    self.args = _command(module, args)
    self.returncode = None
    out_pipe, err_pipe = [], []
    out = _write_fd(stdout, out_pipe)
    err = os.dup(out) if stderr == subprocess.STDOUT else _write_fd(stderr, err_pipe)
    self._pipes = (out_pipe[0] if out_pipe else None, err_pipe[0] if err_pipe else None)
    null = os.open(os.devnull, os.O_RDONLY)
    cwd = os.path.abspath(cwd)
    request = {'module': module, 'args': self.args[3:], 'env': dict(env), 'cwd': cwd}
    self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    self._conn.connect(_server_path(request['env'], cwd))
    socket.send_fds(self._conn, [json.dumps(request).encode()], [null, out, err])
    for fd in (null, out, err):
      os.close(fd)
    self.pid = json.loads(self._conn.recv(_MAX_MESSAGE))['pid']

  def _ended(self, timeout: float | None) -> bool:
    if self.returncode is None and select.select([self._conn], [], [], timeout)[0]:
      self.returncode = json.loads(self._conn.recv(_MAX_MESSAGE))['status']
      self._conn.close()
    return self.returncode is not None

  def poll(self) -> int | None:
    self._ended(0)
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    if not self._ended(timeout):
      raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def send_signal(self, sig: int) -> None:
    if self.poll() is None:
      os.kill(self.pid, sig)

  def terminate(self) -> None:
    self.send_signal(signal.SIGTERM)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
    """Reads the PIPE outputs to their end and waits; on a timeout kills the command and raises
    TimeoutExpired, as subprocess.run does."""
    chunks = {fd: [] for fd in self._pipes if fd is not None}
    deadline = None if timeout is None else time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
      for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
      while sel.get_map():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
          self.kill()
          raise subprocess.TimeoutExpired(self.args, timeout)
        for key, _ in sel.select(left):
          data = os.read(key.fd, 1 << 16)
          if data:
            chunks[key.fd].append(data)
          else:
            sel.unregister(key.fd)
            os.close(key.fd)
    if not self._ended(None if deadline is None else max(0.0, deadline - time.monotonic())):
      self.kill()
      raise subprocess.TimeoutExpired(self.args, timeout)
    texts = tuple(None if fd is None else _decode(b''.join(chunks[fd])) for fd in self._pipes)
    self._pipes = (None, None)
    return texts


def run_module(
  module: str, args, *, env: dict, cwd, timeout: float, cold: bool = False
) -> subprocess.CompletedProcess:
  """`subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
  timeout=timeout)`, the command forked from the warm server; a fresh interpreter when `cold` (a
  test of start-up itself) or with JAXCXR_TEST_COLD=1."""
  if cold or os.environ.get(_COLD_ENV):
    return subprocess.run(
      _command(module, args),
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
  proc = Popen(module, args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def popen(module: str, args, *, env: dict, cwd, stdout=None, stderr=None):
  """`Popen` (cold with JAXCXR_TEST_COLD=1: subprocess.Popen(..., text=True))."""
  if os.environ.get(_COLD_ENV):
    return subprocess.Popen(
      _command(module, args),
      cwd=cwd,
      env=env,
      stdout=stdout,
      stderr=stderr,
      text=True,
    )
  return Popen(module, args, env=env, cwd=cwd, stdout=stdout, stderr=stderr)


if __name__ == '__main__':
  if sys.argv[1:2] != ['serve'] or len(sys.argv) != 3:
    sys.exit('usage: python -m tests.warm serve SOCKET')
  serve(sys.argv[2])
