"""Load of one traffic process: event-loop lag, CPU use and the open-file limit.

An overloaded asyncio process shows it first as event-loop lag: timers fire
late, so audio frames, token gaps and think times stretch and the flows
stop looking like the plans. `LoadMonitor` measures that lag with a timer
that should fire every `interval` seconds, and the CPU time the process used.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSample:
    """Load since the previous sample: CPU time over wall time, and the lag of the monitor's timer in seconds."""

    cpu: float
    lag_mean: float
    lag_max: float

    def describe(self) -> str:
        return (f"CPU {100 * self.cpu:.0f}%, loop lag mean {1000 * self.lag_mean:.1f} ms "
                f"max {1000 * self.lag_max:.0f} ms")


class LoadMonitor:
    """Samples event-loop lag and CPU use of this process; run `run()` as a task, read `sample()`."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._lags = 0.0
        self._lag_max = 0.0
        self._count = 0
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - before - self.interval)
            self._lags += lag
            self._lag_max = max(self._lag_max, lag)
            self._count += 1

    def sample(self) -> LoadSample:
        """Return the load since the previous call and start a new interval."""
        cpu, wall = time.process_time(), time.monotonic()
        load = LoadSample(
            cpu=(cpu - self._cpu) / max(wall - self._wall, 1e-9),
            lag_mean=self._lags / self._count if self._count else 0.0,
            lag_max=self._lag_max,
        )
        self._cpu, self._wall = cpu, wall
        self._lags = self._lag_max = 0.0
        self._count = 0
        return load


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new soft limit.

    Each TCP connection is a file descriptor, and shells often start
    programs with a soft limit of 1024 while allowing far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft
