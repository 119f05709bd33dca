"""Traffic client: runs scenario sessions against the traffic server and labels every connection.

    python -m tools.traffic.client --server 198.19.0.2 --ca /tmp/tls/ca.pem \\
        --labels labels.csv --duration 600 --concurrency 560 --workers 2 --seed 1

Sessions k = 0, 1, 2, ... start one after another, at most one every
`START_GAP_SECONDS` (scaled) and up to --concurrency at once, until
--duration seconds have passed or --max-sessions sessions have started,
whichever comes first; then no new session starts and the running ones
finish. Session k plays `plan_session(seed, k)`, so a seed fixes every
session's scenario and parameters, whatever the number of workers. Each
session is cancelled if it outlives its scenario's `max_seconds` (scaled)
plus `runner.SESSION_SLACK_SECONDS`. Every TCP connection gets a row in
--labels as soon as it closes.

With --workers N > 1 the sessions run in N worker processes
(`client_worker`), each session in the worker with the fewest running; this
process only hands out session indices, writes the labels file and logs
progress. Every ~10 s the progress log gives sessions, flows per family and
label, the expected end and the load (CPU, event-loop lag) of every process.

Exit status: 0, or 1 if more than --max-failed-fraction of the sessions
failed, 2 for invalid options, 130 when interrupted by SIGINT or SIGTERM.

In-process use: `report = await run_clients(ClientConfig(...))`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import resource
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.traffic.children import ChildProcess, Message, cancel_on_signals
from tools.traffic.client_worker import worker_config
from tools.traffic.connections import SourcePorts, check_test_address
from tools.traffic.labels import LabelRow, LabelWriter
from tools.traffic.monitor import LoadMonitor, LoadSample, raise_open_file_limit
from tools.traffic.pacing import Pace
from tools.traffic.runner import (
    CANCELLED,
    FAILED,
    FINISHED,
    SessionEnd,
    SessionRunner,
    describe_error,
    session_bound,
)
from tools.traffic.scenarios import DEFAULT_MIX, FAMILIES, MixEntry, check_mix, weighted_mix
from tools.traffic.sessions import RUNNERS, Target
from tools.traffic.tlsca import client_ssl_context

__all__ = ["ClientConfig", "RunReport", "describe_error", "main", "parse_args", "parse_mix", "run_clients"]

logger = logging.getLogger(__name__)

# Gap between session starts, in real seconds (scaled): at most 20 starts a
# second, so that the first --concurrency sessions do not all open their
# connections in the same instant.
START_GAP_SECONDS = 0.05
MAX_CONCURRENCY = 4000
MAX_WORKERS = 16
# A session has a few sockets open at once (estimate: at most four, for an MCP
# session with its GET stream, a POST, an idle keep-alive connection and the
# DELETE). A process also needs some files of its own.
FILES_PER_SESSION = 4
FILES_RESERVED = 64
# How long worker processes get after SIGTERM to close their sessions' connections and report them.
WORKER_STOP_TIMEOUT = 30.0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ClientConfig:
    """Options of one client run; `validate` checks them all."""

    ca: Path
    labels: Path
    concurrency: int
    seed: int
    duration: float | None = None
    max_sessions: int | None = None
    workers: int = 1
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

        if self.duration is None and self.max_sessions is None:
            raise ValueError("neither --duration nor --max-sessions is set; pass at least one to bound the run")
        if self.duration is not None:
            _check_positive("--duration", self.duration, "seconds")
        if self.max_sessions is not None and (
            isinstance(self.max_sessions, bool) or not isinstance(self.max_sessions, int) or self.max_sessions < 1
        ):
            raise ValueError(f"--max-sessions {self.max_sessions!r} must be an integer >= 1")
        _check_positive("--time-scale", self.time_scale, "a factor")
        _check_positive("progress_interval", self.progress_interval, "seconds")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency {self.concurrency!r} must be an integer in [1, {MAX_CONCURRENCY}]")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers {self.workers!r} must be an integer in [1, {MAX_WORKERS}]")
        _check_open_files(self.concurrency, self.workers)
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
                    "register one with @tools.traffic.context.session_runner"
                )


def _check_positive(option: str, value: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} {value!r} must be {unit} greater than 0")


def _check_open_files(concurrency: int, workers: int) -> None:
    per_process = math.ceil(concurrency / workers)
    needed = per_process * FILES_PER_SESSION + FILES_RESERVED
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ValueError(
            f"--concurrency {concurrency} with --workers {workers} needs about {needed} open files per process, "
            f"but the hard limit (ulimit -Hn) is {hard}; raise the limit or use more --workers"
        )


@dataclass
class RunReport:
    """Counts of a run: sessions per scenario, label rows per scenario and per (family, label), runner events."""

    started: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)
    connections: Counter[str] = field(default_factory=Counter)
    flows: Counter[tuple[str, int]] = field(default_factory=Counter)
    events: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def failed_fraction(self) -> float:
        started = sum(self.started.values())
        return sum(self.failed.values()) / started if started else 0.0

    def flows_by_family(self) -> str:
        """Describe the label rows per family as "ws 120 AI / 118 not AI, ..."."""
        parts = []
        for family in FAMILIES:
            ai, not_ai = self.flows[(family, 1)], self.flows[(family, 0)]
            if ai or not_ai:
                parts.append(f"{family} {ai} AI / {not_ai} not AI")
        return ", ".join(parts) or "none yet"

    def summary(self) -> str:
        lines = []
        for scenario in sorted(self.started):
            events = ", ".join(f"{name}={count}" for name, count in sorted(self.events[scenario].items()))
            lines.append(
                f"{scenario}: {self.started[scenario]} started, {self.finished[scenario]} finished, "
                f"{self.failed[scenario]} failed, {self.connections[scenario]} connections; {events or 'no events'}"
            )
        lines.append(f"flows per family: {self.flows_by_family()}")
        return "\n".join(lines)


async def run_clients(config: ClientConfig) -> RunReport:
    """Run the sessions `config` describes, write the labels file and return the counts.

    Raises ValueError for an invalid config. Failed sessions do not raise:
    they are logged and counted in the report.
    """
    config.validate()
    raise_open_file_limit()
    report = RunReport()
    with LabelWriter(config.labels) as writer:
        await _Run(config, writer, report).run()
    return report


class _LocalExecutor:
    """Runs sessions in the client's own event loop."""

    name = "client"

    def __init__(self, run: _Run) -> None:
        config = run.config
        target = Target(
            host=config.server,
            ws_port=config.ws_port,
            wss_port=config.wss_port,
            https_port=config.https_port,
            ssl_context=client_ssl_context(config.ca),
            source_ports=SourcePorts.from_system(),
        )
        self.running = 0
        self.alive = True
        self._run = run
        self._runner = SessionRunner(target, config.seed, config.mix, config.time_scale, run.on_row, self._ended)

    def _ended(self, end: SessionEnd) -> None:
        self.running -= 1
        self._run.on_end(end)

    async def start(self) -> None:
        pass

    def submit(self, index: int) -> None:
        self.running += 1
        self._runner.start(index)

    async def finish(self) -> None:
        await self._runner.wait()

    async def abort(self) -> None:
        await self._runner.cancel()


class _WorkerExecutor:
    """Runs sessions in one worker process and relays what it reports."""

    def __init__(self, run: _Run, worker: int) -> None:
        config = run.config
        self.name = f"worker {worker}"
        self.running = 0
        self.alive = True
        self._run = run
        self._pending: dict[int, str] = {}
        self._child = ChildProcess(
            f"client worker {worker}",
            "tools.traffic.client_worker",
            worker_config(
                worker=worker, workers=config.workers, server=config.server, ws_port=config.ws_port,
                wss_port=config.wss_port, https_port=config.https_port, ca=str(config.ca), seed=config.seed,
                mix=list(config.mix), time_scale=config.time_scale, progress_interval=config.progress_interval,
                log_level=logging.getLogger().getEffectiveLevel(),
            ),
            self._message,
            self._exited,
        )

    async def start(self) -> None:
        await self._child.start()

    def submit(self, index: int) -> None:
        self.running += 1
        self._pending[index] = self._run.config.mix[index % len(self._run.config.mix)][0]
        self._child.send_line(str(index))

    def _message(self, message: Message) -> None:
        kind = message.get("kind")
        if kind == "row":
            self._run.on_row(LabelRow(**message["row"]))
        elif kind == "end":
            end = SessionEnd(**{field.name: message[field.name] for field in dataclasses.fields(SessionEnd)})
            self._pending.pop(end.index, None)
            self.running -= 1
            self._run.on_end(end)
        elif kind == "load":
            self._run.loads[self.name] = LoadSample(message["cpu"], message["lag_mean"], message["lag_max"])
        else:
            logger.error("%s sent a message of unknown kind %r", self.name, kind)

    def _exited(self, status: int) -> None:
        self.alive = False
        if status != 0 or self._pending:
            logger.error(
                "%s (pid %s) exited with status %d while %d sessions were running; counting them as failed",
                self.name, self._child.pid, status, len(self._pending),
            )
        for index, scenario in sorted(self._pending.items()):
            self.running -= 1
            self._run.on_end(SessionEnd(index, scenario, FAILED, 0.0, {}))
        self._pending.clear()

    async def finish(self) -> None:
        self._child.close_input()
        await self._child.wait()

    async def abort(self) -> None:
        await self._child.stop(WORKER_STOP_TIMEOUT)


class _Run:
    def __init__(self, config: ClientConfig, writer: LabelWriter, report: RunReport) -> None:
        self.config = config
        self.writer = writer
        self.report = report
        self.pace = Pace(config.time_scale)
        self.slots = asyncio.Semaphore(config.concurrency)
        self.loads: dict[str, LoadSample] = {}
        # Wall-clock time by which each running session must have ended, by index.
        self.deadlines: dict[int, float] = {}
        self.index = 0
        self.started_wall = time.time()
        self.starts_end_wall: float | None = None
        self.executors: list[_LocalExecutor | _WorkerExecutor] = (
            [_LocalExecutor(self)] if config.workers == 1
            else [_WorkerExecutor(self, worker) for worker in range(config.workers)]
        )

    def on_row(self, row: LabelRow) -> None:
        self.writer.write(row)
        self.report.connections[row.scenario] += 1
        self.report.flows[(row.family, row.label)] += 1

    def on_end(self, end: SessionEnd) -> None:
        outcomes = {FINISHED: self.report.finished, FAILED: self.report.failed, CANCELLED: self.report.cancelled}
        outcomes[end.outcome][end.scenario] += 1
        self.report.events[end.scenario].update(end.events)
        self.deadlines.pop(end.index, None)
        self.slots.release()

    @property
    def running(self) -> int:
        return sum(executor.running for executor in self.executors)

    async def run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = None if config.duration is None else loop.time() + config.duration
        self.started_wall = time.time()
        monitor = LoadMonitor()
        background = [asyncio.create_task(monitor.run()), asyncio.create_task(self._log_progress(monitor))]
        completed = False
        try:
            for executor in self.executors:
                await executor.start()
            await self._start_sessions(deadline)
            self.starts_end_wall = time.time()
            logger.info("sessions started: %d; no new session starts, waiting for the %d still running",
                        self.index, self.running)
            await asyncio.gather(*(executor.finish() for executor in self.executors))
            completed = True
        finally:
            if not completed:
                # Also on cancellation: sessions close their connections, which
                # writes their label rows, before the labels file is closed.
                await asyncio.gather(*(executor.abort() for executor in self.executors), return_exceptions=True)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _start_sessions(self, deadline: float | None) -> None:
        config = self.config
        while config.max_sessions is None or self.index < config.max_sessions:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.slots.acquire()
            except TimeoutError:
                return
            alive = [executor for executor in self.executors if executor.alive]
            if not alive:
                self.slots.release()
                logger.error("every worker process has exited; no more sessions can start")
                return
            executor = min(alive, key=lambda candidate: candidate.running)
            scenario = config.mix[self.index % len(config.mix)][0]
            self.report.started[scenario] += 1
            self.deadlines[self.index] = time.time() + session_bound(scenario, config.time_scale)
            executor.submit(self.index)
            self.index += 1
            await self.pace.sleep(START_GAP_SECONDS)

    async def _log_progress(self, monitor: LoadMonitor) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval)
            report = self.report
            logger.info(
                "progress at %.0f s: sessions running %d, started %d, finished %d, failed %d; "
                "flows recorded %d: %s; %s",
                time.time() - self.started_wall, self.running, sum(report.started.values()),
                sum(report.finished.values()), sum(report.failed.values()), self.writer.rows_written,
                report.flows_by_family(), self._expected_end(),
            )
            self.loads["client"] = monitor.sample()
            logger.info("load: %s", "; ".join(f"{name} {load.describe()}" for name, load in sorted(self.loads.items())))

    def _expected_end(self) -> str:
        """Describe when new sessions stop and by when every session will have ended.

        The bound is each session's start plus the longest its scenario may
        run. A typical length is not estimated, because the sessions that
        finish first are the short ones.
        """
        config = self.config
        now = time.time()
        if self.starts_end_wall is not None:
            starts = "no new sessions"
            latest = max(self.deadlines.values(), default=now)
        else:
            if config.duration is not None:
                starts_end = self.started_wall + config.duration
            else:
                starts_end = None
            if config.max_sessions is not None and self.index:
                rate = self.index / max(now - self.started_wall, 1e-9)
                by_count = now + (config.max_sessions - self.index) / rate
                starts_end = by_count if starts_end is None else min(starts_end, by_count)
            if starts_end is None:
                return "end not known yet"
            starts = f"new sessions until {_clock(starts_end)}"
            longest = max(session_bound(scenario, config.time_scale) for scenario, _ in config.mix)
            latest = max([starts_end + longest, *self.deadlines.values()])
        return f"{starts}, all ended by {_clock(latest)} at the latest"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


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
    mix = weighted_mix(weighted)
    check_mix(mix)
    return mix


def parse_args(argv: list[str] | None = None) -> ClientConfig:
    parser = argparse.ArgumentParser(
        prog="python -m tools.traffic.client",
        description="Run labeled AI and non-AI traffic sessions against the aiflowd traffic server.",
    )

    parser.add_argument("--server", default="127.0.0.1",
                        help="server address, on loopback or in 198.18.0.0/15 (default: %(default)s)")
    parser.add_argument("--ca", type=Path, required=True, help="ca.pem written by the server into its --tls-dir")
    parser.add_argument("--labels", type=Path, required=True, help="CSV file to create, one row per TCP connection")
    parser.add_argument("--duration", type=float,
                        help="seconds during which new sessions start; running sessions then finish")
    parser.add_argument("--max-sessions", type=int,
                        help="start at most this many sessions (indices 0 to N-1); at least one of --duration "
                        "and --max-sessions is required")
    parser.add_argument("--concurrency", type=int, required=True, help="maximum number of sessions at once")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes that run the sessions; 1 runs them in this process "
                        "(default: %(default)s)")
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
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between progress lines in the log (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every session start (debug level)")
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
        max_sessions=args.max_sessions,
        concurrency=args.concurrency,
        workers=args.workers,
        seed=args.seed,
        time_scale=args.time_scale,
        ws_port=args.ws_port,
        wss_port=args.wss_port,
        https_port=args.https_port,
        max_failed_fraction=args.max_failed_fraction,
        progress_interval=args.progress_interval,
        mix=mix,
    )

    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    return config


async def _main(config: ClientConfig) -> RunReport | None:
    main_task = asyncio.current_task()
    assert main_task is not None
    cancel_on_signals(main_task, "traffic client")
    try:
        return await run_clients(config)
    except asyncio.CancelledError:
        return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
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
