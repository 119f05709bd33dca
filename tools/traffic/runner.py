"""Running session plans in one event loop: the part of the client that does the traffic.

`SessionRunner.start(index)` draws plan `index` and runs it as a task,
cancelled if it outlives its scenario's `max_seconds` (scaled) plus
`SESSION_SLACK_SECONDS`. Every connection it closes goes to `on_row` as a
label row, and its end to `on_end` with the outcome, its length and the
events its runner counted. The client runs one `SessionRunner` in its own
process, or one in each worker process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tools.traffic.connections import ClosedConnection
from tools.traffic.labels import LabelRow
from tools.traffic.pacing import Pace
from tools.traffic.scenarios import SCENARIOS, MixEntry, SessionPlan, plan_session
from tools.traffic.sessions import RUNNERS, SessionContext, Target

logger = logging.getLogger(__name__)

# Added to each session's scaled bound: connection set-up, TLS handshakes
# and event-loop delays take the same time at every time scale.
SESSION_SLACK_SECONDS = 15.0

FINISHED = "finished"
FAILED = "failed"
# Stopped from outside: the run was interrupted.
CANCELLED = "cancelled"


@dataclass(frozen=True)
class SessionEnd:
    """The end of a session: its outcome (`FINISHED`, `FAILED` or `CANCELLED`), length in seconds and runner events."""

    index: int
    scenario: str
    outcome: str
    seconds: float
    events: dict[str, int]


def session_bound(scenario: str, time_scale: float) -> float:
    """Return the most seconds a session of `scenario` may run at `time_scale` before it is cancelled."""
    return SCENARIOS[scenario].max_seconds / time_scale + SESSION_SLACK_SECONDS


def describe_error(exc: BaseException) -> str:
    """Name the first leaf error of `exc`, looking inside the exception groups of anyio and asyncio task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class SessionRunner:
    """Runs sessions of a run with `seed` and `mix` against `target`, each as a task of the current loop."""

    def __init__(
        self,
        target: Target,
        seed: int,
        mix: Sequence[MixEntry],
        time_scale: float,
        on_row: Callable[[LabelRow], None],
        on_end: Callable[[SessionEnd], None],
    ) -> None:
        self.target = target
        self.seed = seed
        self.mix = mix
        self.time_scale = time_scale
        self.pace = Pace(time_scale)
        self.on_row = on_row
        self.on_end = on_end
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, index: int) -> SessionPlan:
        """Draw plan `index` and start running it; return the plan."""
        plan = plan_session(self.seed, index, self.mix)
        task = asyncio.create_task(self._session(plan), name=f"session-{index}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return plan

    async def wait(self) -> None:
        """Wait until every started session has ended."""
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def cancel(self) -> None:
        """Cancel every running session and wait until each has closed its connections and reported."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _session(self, plan: SessionPlan) -> None:
        bound = session_bound(plan.scenario, self.time_scale)
        events: Counter[str] = Counter()
        context = SessionContext(
            plan=plan,
            target=self.target,
            pace=self.pace,
            on_closed=lambda closed: self._record(plan, closed),
            events=events,
        )
        logger.debug("session %d: %s over %s starts: %s", plan.index, plan.scenario, plan.family, dict(plan.params))
        started = time.monotonic()
        outcome = FAILED
        timeout = asyncio.timeout(bound)
        try:
            async with timeout:
                await RUNNERS[plan.scenario](context)
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and timeout.expired():
                logger.error(
                    "session %d (%s over %s) timed out after %.1f s, its bound; the server may be stalled",
                    plan.index, plan.scenario, plan.family, bound,
                )
            else:
                logger.error(
                    "session %d (%s over %s) failed: %s", plan.index, plan.scenario, plan.family, describe_error(exc)
                )
                logger.debug("session %d traceback", plan.index, exc_info=exc)
        else:
            outcome = FINISHED
        finally:
            self.on_end(SessionEnd(plan.index, plan.scenario, outcome, time.monotonic() - started, dict(events)))

    def _record(self, plan: SessionPlan, closed: ClosedConnection) -> None:
        self.on_row(
            LabelRow(
                src_ip=closed.local[0],
                src_port=closed.local[1],
                dst_ip=closed.remote[0],
                dst_port=closed.remote[1],
                family=plan.family,
                scenario=plan.scenario,
                label=plan.label,
                encrypted=plan.encrypted,
                session=plan.index,
                start=closed.start,
                end=closed.end,
            )
        )
