"""Is the machine quiet enough to benchmark? Load average before, foreign CPU use during.

Two checks, because each misses what the other sees:

- Before a measurement, the 1-minute load average must be at most `max_load_per_core * cores`
  (1.5 on a 2-core machine). Our own previous measurement lifts it too (it decays with a 1-minute
  time constant), so `wait_until_quiet` polls for up to `settle_s` before giving up.
- During a measurement the load average counts our own busy threads, so it cannot tell whether
  anything else ran. `CpuMeter` can: it reads the machine's busy CPU time from /proc/stat and
  subtracts the CPU time of this process and its (reaped) children; what is left is CPU time that
  other processes took while we measured, in cores.

A run that fails either check is refused (`BUSY_EXIT`) unless the caller allows load, in which case
every row carries the reason and the report says loudly that its figures are not benchmarks.
"""

import dataclasses
import os
import resource
import time
from collections.abc import Callable

# sysexits.h EX_TEMPFAIL ("try again later"): the machine was busy, nothing is wrong with the run.
BUSY_EXIT = 75
DEFAULT_MAX_LOAD_PER_CORE = 0.75  # 1.5 on the 2-core machine of issue #15
DEFAULT_MAX_FOREIGN_CORES_PER_CORE = 0.1


def cores() -> int:
  """CPUs this process may run on (the affinity mask, else the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def max_load(per_core: float = DEFAULT_MAX_LOAD_PER_CORE) -> float:
  """The 1-minute load average above which the machine counts as busy."""
  return per_core * cores()


def wait_until_quiet(
  limit: float,
  settle_s: float,
  *,
  poll_s: float = 5.0,
  loadavg: Callable[[], tuple] = os.getloadavg,
  sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, float, float]:
  """Waits up to `settle_s` for the 1-minute load average to reach `limit`.

  Returns:
    (quiet, load1 at the end, seconds waited).
  """
  waited = 0.0
  while True:
    load1 = float(loadavg()[0])
    if load1 <= limit:
      return True, load1, waited
    if waited >= settle_s:
      return False, load1, waited
    step = min(poll_s, settle_s - waited)
    sleep(step)
    waited += step


def _machine_busy_s() -> float | None:
  """Busy CPU seconds of the whole machine since boot (all CPUs), from /proc/stat."""
  try:
    with open('/proc/stat') as f:
      fields = f.readline().split()
  except OSError:
    return None
  if not fields or fields[0] != 'cpu':
    return None
  ticks = [int(x) for x in fields[1:]]
  # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
  busy = sum(ticks[:8]) - ticks[3] - ticks[4]
  return busy / os.sysconf('SC_CLK_TCK')


def _own_cpu_s() -> float:
  me = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass
class CpuMeter:
  """CPU time other processes used while a measurement ran (children must be reaped by `stop`)."""

  _wall: float = 0.0
  _busy: float | None = None
  _own: float = 0.0

  def start(self) -> 'CpuMeter':
    self._wall, self._busy, self._own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
    return self

  def stop(self) -> float | None:
    """Average cores used by other processes since `start` (None where /proc/stat is missing)."""
    busy = _machine_busy_s()
    if busy is None or self._busy is None:
      return None
    wall = max(time.perf_counter() - self._wall, 1e-9)
    foreign = (busy - self._busy) - (_own_cpu_s() - self._own)
    # Tick granularity (10 ms) can make an idle machine read slightly negative.
    return max(foreign, 0.0) / wall


@dataclasses.dataclass
class Verdict:
  """Whether one measurement's conditions were clean, and why not."""

  load_before: float
  load_after: float
  foreign_cores: float | None
  problems: list[str]

  @property
  def ok(self) -> bool:
    return not self.problems

  def as_dict(self) -> dict:
    return {
      'loadavg_before': self.load_before,
      'loadavg_after': self.load_after,
      'foreign_cores': self.foreign_cores,
      'load_ok': self.ok,
      'load_problems': list(self.problems),
    }


def judge(
  load_before: float,
  load_after: float,
  foreign_cores: float | None,
  *,
  limit: float,
  foreign_limit: float,
) -> Verdict:
  """Verdict of one measurement: load average before it and foreign CPU use during it."""
  problems = []
  if load_before > limit:
    problems.append(f'1-minute load average {load_before:.2f} > {limit:.2f} before the run')
  if foreign_cores is not None and foreign_cores > foreign_limit:
    problems.append(
      f'other processes used {foreign_cores:.2f} cores during the run (limit {foreign_limit:.2f})'
    )
  return Verdict(load_before, load_after, foreign_cores, problems)


def busy_message(problems: list[str], what: str = 'benchmark') -> str:
  """The refusal text: what was wrong and how to proceed."""
  return (
    f'Refusing to report {what} figures: ' + '; '.join(problems) + f' ({cores()} cores). '
    'Stop other jobs (test suites, other benchmarks) and re-run, or pass --allow_load to '
    'record numbers marked as taken under load (not benchmark figures).'
  )
