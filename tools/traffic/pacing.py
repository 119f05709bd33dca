"""Real time divided by the time scale, for the client and the server alike.

Plans give waits in seconds of real time and rates per second of real time.
A run at time scale X divides every wait by X and multiplies every rate by
X, so a scaled run keeps the same plans and only runs faster.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

# Largest time scale a server accepts from a request: at 1000 a 60 ms audio
# frame interval becomes 60 us, below what an event loop can keep anyway.
MAX_TIME_SCALE = 1000.0


def check_time_scale(value: object, where: str) -> float:
    """Return `value` as a float if it is a time scale in (0, MAX_TIME_SCALE].

    Raises:
        ValueError: naming `where`, the value and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} {value!r} is not a number; pass a time scale in (0, {MAX_TIME_SCALE:g}]")
    if not math.isfinite(value) or not 0 < value <= MAX_TIME_SCALE:
        raise ValueError(f"{where} {value!r} is out of range; pass a time scale in (0, {MAX_TIME_SCALE:g}]")
    return float(value)


class Pace:
    """Real time divided by the time scale: waits shrink and rates grow by `time_scale`.

    NOTE: timers of the libraries are not scaled: httpx2 and uvicorn drop
    keep-alive connections idle for 5 s, websockets pings every 20 s. A scaled
    run therefore reuses HTTPS connections that a real-time run reopens after
    each think time, so only time scale 1 gives dataset-grade flows.
    """

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale

    def seconds(self, value: float) -> float:
        return value / self.time_scale

    def rate(self, value: float) -> float:
        return value * self.time_scale

    async def sleep(self, value: float) -> None:
        await asyncio.sleep(value / self.time_scale)

    async def ticks(self, interval: float, count: int) -> AsyncIterator[int]:
        """Yield 0..count-1, tick k at k * `interval` (scaled) after the first.

        The ticks follow a fixed schedule instead of sleeping `interval` after
        each one, so time spent between ticks does not add up: 1,000 audio
        frames 60 ms apart take 60 s, not 60 s plus 1,000 wake-up delays.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = self.seconds(interval)
        for tick in range(count):
            delay = start + tick * step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield tick
