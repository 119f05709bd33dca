"""Traffic client: runs scenario sessions against the traffic server and labels every connection.

    python -m tools.traffic.client --server 198.19.0.2 --ca /tmp/tls/ca.pem \\
        --labels labels.csv --duration 600 --concurrency 24 --seed 1

Sessions k = 0, 1, 2, ... start one after another, up to --concurrency at
once, until --duration seconds have passed; then no new session starts and
the running ones finish. Session k plays `plan_session(seed, k)`, so a seed
fixes every session's scenario and parameters. Each session is cancelled if it
outlives its scenario's `max_seconds` (scaled) plus `SESSION_SLACK_SECONDS`.
Every TCP connection gets a row in --labels as soon as it closes.

Exit status: 0, or 1 if more than --max-failed-fraction of the sessions
failed, 2 for invalid options, 130 when interrupted by SIGINT or SIGTERM.

In-process use: `report = await run_clients(ClientConfig(...))`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.traffic.connections import ClosedConnection, check_test_address
from tools.traffic.labels import LabelRow, LabelWriter
from tools.traffic.scenarios import DEFAULT_MIX, SCENARIOS, MixEntry, SessionPlan, check_mix, plan_session
from tools.traffic.sessions import RUNNERS, Pace, SessionContext, Target
from tools.traffic.tlsca import client_ssl_context

logger = logging.getLogger(__name__)

# Added to each session's scaled bound: connection set-up, TLS handshakes
# and event-loop delays take the same time at every time scale.
SESSION_SLACK_SECONDS = 15.0
# Gap between session starts, in real seconds (scaled), so that the first
# --concurrency sessions do not all open their connections in the same instant.
START_GAP_SECONDS = 0.25
# A session has a few sockets open at once (estimate: at most four, for an MCP
# session with its GET stream, a POST, an idle keep-alive connection and the
# DELETE), so this many sessions stay below the usual soft limit of 1024 open files.
MAX_CONCURRENCY = 200
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ClientConfig:
    """Options of one client run; `validate` checks them all."""

    ca: Path
    labels: Path
    duration: float
    concurrency: int
    seed: int
    server: str = "127.0.0.1"
    time_scale: float = 1.0
    ws_port: int = 80
    wss_port: int = 443
    https_port: int = 8443
    max_failed_fraction: float = 0.05
    progress_interval: float = 10.0
    mix: Sequence[MixEntry] = DEFAULT_MIX

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option, its value and what is allowed."""
        check_test_address(self.server, "--server")

        for option, port in (("--ws-port", self.ws_port), ("--wss-port", self.wss_port),
                             ("--https-port", self.https_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{option} {port!r} is not a TCP port; use 1-65535")

        _check_positive("--duration", self.duration, "seconds")
        _check_positive("--time-scale", self.time_scale, "a factor")
        _check_positive("progress_interval", self.progress_interval, "seconds")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency {self.concurrency!r} must be an integer in [1, {MAX_CONCURRENCY}]")
        if not isinstance(self.seed, int):
            raise ValueError(f"--seed {self.seed!r} must be an integer")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"--max-failed-fraction {self.max_failed_fraction!r} must be in [0, 1]")

        if not Path(self.ca).is_file():
            raise ValueError(f"--ca {str(self.ca)!r} not found; pass the ca.pem the server wrote into its --tls-dir")
        if Path(self.labels).exists():
            raise ValueError(f"--labels {str(self.labels)!r} already exists; remove it or choose another path")
        if not Path(self.labels).parent.is_dir():
            raise ValueError(
                f"--labels {str(self.labels)!r}: directory {str(Path(self.labels).parent)!r} not found; create it first"
            )

        check_mix(self.mix)
        for scenario, _ in self.mix:
            if scenario not in RUNNERS:
                raise ValueError(
                    f"scenario {scenario!r} is in the mix but has no runner; "
                    "register one with @tools.traffic.sessions.session_runner"
                )


def _check_positive(option: str, value: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} {value!r} must be {unit} greater than 0")


@dataclass
class RunReport:
    """Per-scenario counts of a run: sessions, label rows written and events the runners counted."""

    started: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    connections: Counter[str] = field(default_factory=Counter)
    events: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def failed_fraction(self) -> float:
        started = sum(self.started.values())
        return sum(self.failed.values()) / started if started else 0.0

    def summary(self) -> str:
        lines = []
        for scenario in sorted(self.started):
            events = ", ".join(f"{name}={count}" for name, count in sorted(self.events[scenario].items()))
            lines.append(
                f"{scenario}: {self.started[scenario]} started, {self.finished[scenario]} finished, "
                f"{self.failed[scenario]} failed, {self.connections[scenario]} connections; {events or 'no events'}"
            )
        return "\n".join(lines)


async def run_clients(config: ClientConfig) -> RunReport:
    """Run the sessions `config` describes, write the labels file and return the counts.

    Raises ValueError for an invalid config. Failed sessions do not raise:
    they are logged and counted in the report.
    """
    config.validate()
    target = Target(
        host=config.server,
        ws_port=config.ws_port,
        wss_port=config.wss_port,
        https_port=config.https_port,
        ssl_context=client_ssl_context(config.ca),
    )
    report = RunReport()
    with LabelWriter(config.labels) as writer:
        await _Run(config, target, writer, report).run()
    return report


class _Run:
    def __init__(self, config: ClientConfig, target: Target, writer: LabelWriter, report: RunReport) -> None:
        self.config = config
        self.target = target
        self.writer = writer
        self.report = report
        self.pace = Pace(config.time_scale)
        self.sessions: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.duration
        slots = asyncio.Semaphore(self.config.concurrency)
        progress = asyncio.create_task(self._log_progress(loop.time()))
        try:
            index = 0
            while loop.time() < deadline:
                try:
                    async with asyncio.timeout_at(deadline):
                        await slots.acquire()
                except TimeoutError:
                    break
                plan = plan_session(self.config.seed, index, self.config.mix)
                task = asyncio.create_task(self._session(plan, slots), name=f"session-{index}")
                self.sessions.add(task)
                task.add_done_callback(self.sessions.discard)
                index += 1
                await self.pace.sleep(START_GAP_SECONDS)
            logger.info(
                "duration of %.1f s reached after %d sessions; waiting for %d running sessions",
                self.config.duration, index, len(self.sessions),
            )
            if self.sessions:
                await asyncio.wait(set(self.sessions))
        finally:
            # Also on cancellation: cancelled sessions close their connections,
            # which writes their label rows, before the labels file is closed.
            progress.cancel()
            for task in self.sessions:
                task.cancel()
            await asyncio.gather(progress, *self.sessions, return_exceptions=True)

    async def _session(self, plan: SessionPlan, slots: asyncio.Semaphore) -> None:
        report = self.report
        bound = SCENARIOS[plan.scenario].max_seconds / self.config.time_scale + SESSION_SLACK_SECONDS
        context = SessionContext(
            plan=plan,
            target=self.target,
            pace=self.pace,
            on_closed=lambda closed: self._record(plan, closed),
            events=report.events[plan.scenario],
        )
        report.started[plan.scenario] += 1
        logger.debug("session %d: %s over %s starts: %s", plan.index, plan.scenario, plan.family, dict(plan.params))
        timeout = asyncio.timeout(bound)
        try:
            async with timeout:
                await RUNNERS[plan.scenario](context)
        except Exception as exc:
            report.failed[plan.scenario] += 1
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
            report.finished[plan.scenario] += 1
        finally:
            slots.release()

    def _record(self, plan: SessionPlan, closed: ClosedConnection) -> None:
        self.writer.write(
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
        self.report.connections[plan.scenario] += 1

    async def _log_progress(self, started_at: float) -> None:
        loop = asyncio.get_running_loop()
        report = self.report
        while True:
            await asyncio.sleep(self.config.progress_interval)
            per_scenario = ", ".join(
                f"{name} {report.started[name]}/{report.finished[name]}" for name in sorted(report.started)
            )
            logger.info(
                "progress at %.0f s: %d sessions running, %d failed, %d connections recorded; "
                "started/finished: %s",
                loop.time() - started_at, len(self.sessions), sum(report.failed.values()),
                self.writer.rows_written, per_scenario,
            )


def describe_error(exc: BaseException) -> str:
    """Name the first leaf error of `exc`, looking inside the exception groups of anyio and asyncio task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def parse_mix(text: str) -> tuple[MixEntry, ...]:
    """Parse a mix such as "llm_chat/ws:2,iot_telemetry/ws:2,mcp_tools/mcp".

    Each entry is scenario/family with an optional integer weight (default 1).
    Weighted entries are interleaved round by round, so any stretch of
    consecutive sessions stays close to the requested proportions.
    """
    weighted = []
    for item in text.split(","):
        entry, _, weight_text = item.strip().partition(":")
        scenario, slash, family = entry.partition("/")
        if not slash or not scenario or not family:
            raise ValueError(f"invalid mix entry {item!r}; expected scenario/family[:weight], "
                             "e.g. llm_chat/ws:2")
        try:
            weight = int(weight_text) if weight_text else 1
        except ValueError:
            weight = 0
        if weight < 1:
            raise ValueError(f"invalid weight {weight_text!r} in mix entry {item!r}; "
                             "expected an integer >= 1")
        weighted.append(((scenario, family), weight))
    mix = []
    for round_index in range(max(weight for _, weight in weighted)):
        mix.extend(entry for entry, weight in weighted if weight > round_index)
    check_mix(mix)
    return tuple(mix)


def parse_args(argv: list[str] | None = None) -> ClientConfig:
    parser = argparse.ArgumentParser(
        prog="python -m tools.traffic.client",
        description="Run labeled AI and non-AI traffic sessions against the aiflowd traffic server.",
    )

    parser.add_argument("--server", default="127.0.0.1",
                        help="server address, on loopback or in 198.18.0.0/15 (default: %(default)s)")
    parser.add_argument("--ca", type=Path, required=True, help="ca.pem written by the server into its --tls-dir")
    parser.add_argument("--labels", type=Path, required=True, help="CSV file to create, one row per TCP connection")
    parser.add_argument("--duration", type=float, required=True,
                        help="seconds during which new sessions start; running sessions then finish")
    parser.add_argument("--concurrency", type=int, required=True, help="maximum number of sessions at once")
    parser.add_argument("--seed", type=int, required=True, help="seed of the session plans")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="divide every wait and period by this factor, for tests (default: %(default)s)")
    parser.add_argument("--ws-port", type=int, default=80, help="server's plain WebSocket port (default: %(default)s)")
    parser.add_argument("--wss-port", type=int, default=443, help="server's TLS WebSocket port (default: %(default)s)")
    parser.add_argument("--https-port", type=int, default=8443, help="server's HTTPS port (default: %(default)s)")
    parser.add_argument("--mix", default="",
                        help="sessions to run, as scenario/family[:weight] entries separated by commas "
                        "(default: every scenario and family, each family balanced between AI and not AI)")
    parser.add_argument("--max-failed-fraction", type=float, default=0.05,
                        help="exit with status 1 if more than this fraction of sessions fail (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix) if args.mix else DEFAULT_MIX
    except ValueError as exc:
        parser.error(str(exc))

    config = ClientConfig(
        server=args.server,
        ca=args.ca,
        labels=args.labels,
        duration=args.duration,
        concurrency=args.concurrency,
        seed=args.seed,
        time_scale=args.time_scale,
        ws_port=args.ws_port,
        wss_port=args.wss_port,
        https_port=args.https_port,
        max_failed_fraction=args.max_failed_fraction,
        mix=mix,
    )

    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


async def _main(config: ClientConfig) -> RunReport | None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, main_task.cancel)
    try:
        return await run_clients(config)
    except asyncio.CancelledError:
        return None


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK and httpx2 log every request and session at INFO; keep their warnings only.
    for noisy in ("mcp", "httpx2", "httpcore2", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    report = asyncio.run(_main(config))
    if report is None:
        logger.error("interrupted; label rows of every closed connection are in %s", config.labels)
        return EXIT_INTERRUPTED
    logger.info("sessions per scenario:\n%s", report.summary())
    failed = sum(report.failed.values())
    started = sum(report.started.values())
    logger.info(
        "%d of %d sessions failed (%.1f%%); %d connections labeled in %s",
        failed, started, 100 * report.failed_fraction, sum(report.connections.values()), config.labels,
    )
    if report.failed_fraction > config.max_failed_fraction:
        logger.error(
            "more than %.1f%% of sessions failed; see the errors above", 100 * config.max_failed_fraction
        )
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
