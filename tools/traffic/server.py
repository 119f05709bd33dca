"""Traffic server: WebSocket (plain and TLS) and HTTPS with MCP, in one or more asyncio processes.

    python -m tools.traffic.server --host 198.19.0.2 --ws-port 80 --wss-port 443 \\
        --https-port 8443 --tls-dir /tmp/tls --ready-file /tmp/server.ready --processes 2

At start the server writes a fresh test PKI into --tls-dir (ca.pem for the
client) and binds every listener. With --processes N > 1 it also starts N-1
extra WebSocket processes (`server_worker`) that listen on the same
WebSocket ports through SO_REUSEPORT; HTTPS stays in this process. Only
once every process is listening does it write the ready file, JSON with the
bound ports (so port 0 for any free port works), and print the line
`ready ws=PORT wss=PORT https=PORT` on stdout. Every ~10 s each process logs
its open connections and its load (CPU, event-loop lag). SIGTERM or SIGINT
stops it: listeners close, open WebSockets get a close frame, HTTPS
requests get `SHUTDOWN_GRACE_SECONDS` to finish, the extra processes report
their counts, and the exit status is 0.

In-process use: `await serve(ServerConfig(...), stop_event, on_ready)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvicorn
from websockets.asyncio.server import serve as serve_websockets

from tools.traffic.children import ChildProcess, Message
from tools.traffic.connections import check_test_address
from tools.traffic.handlers import (
    ServerStats,
    build_https_app,
    websocket_handler,
    websocket_process_request,
)
from tools.traffic.monitor import LoadMonitor, raise_open_file_limit
from tools.traffic.server_worker import helper_config, listening_socket
from tools.traffic.tlsca import TlsFiles, server_ssl_context, write_test_pki

logger = logging.getLogger(__name__)

# How long open HTTPS requests (MCP GET streams above all) may run on after a
# stop before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 3.0
MAX_PROCESSES = 16
# Seconds an extra process may take to import its modules and bind its ports.
PROCESS_READY_TIMEOUT = 60.0
# Seconds an extra process gets after SIGTERM to close its WebSockets and report.
PROCESS_STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServerConfig:
    """Listen address, ports (0 = any free port), PKI directory and optional output files."""

    host: str = "127.0.0.1"
    ws_port: int = 80
    wss_port: int = 443
    https_port: int = 8443
    tls_dir: Path = Path("tls")
    ready_file: Path | None = None
    stats_file: Path | None = None
    processes: int = 1
    progress_interval: float = 10.0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        check_test_address(self.host, "--host")
        if isinstance(self.processes, bool) or not isinstance(self.processes, int) or not (
            1 <= self.processes <= MAX_PROCESSES
        ):
            raise ValueError(f"--processes {self.processes!r} must be an integer in [1, {MAX_PROCESSES}]")
        if not self.progress_interval > 0:
            raise ValueError(f"progress_interval {self.progress_interval!r} must be seconds greater than 0")
        ports = {"--ws-port": self.ws_port, "--wss-port": self.wss_port, "--https-port": self.https_port}
        for option, port in ports.items():
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{option} {port!r} is not a TCP port; use 1-65535, or 0 for any free port")
        fixed = [port for port in ports.values() if port]
        if len(fixed) != len(set(fixed)):
            raise ValueError(f"--ws-port, --wss-port and --https-port must differ, got {list(ports.values())}")
        for option, path in (("--ready-file", self.ready_file), ("--stats-file", self.stats_file)):
            if path is not None and not Path(path).parent.is_dir():
                raise ValueError(
                    f"{option} {str(path)!r}: directory {str(Path(path).parent)!r} not found; create it first"
                )


@dataclass(frozen=True)
class BoundServer:
    """Listen address and ports of a started server: the content of the ready file."""

    pid: int
    host: str
    ws_port: int
    wss_port: int
    https_port: int
    ca: str


async def serve(
    config: ServerConfig,
    stop: asyncio.Event,
    on_ready: Callable[[BoundServer], None] | None = None,
) -> ServerStats:
    """Run the server until `stop` is set; call `on_ready` once every listener is bound.

    Returns the counts of what was served. Raises ValueError for an invalid
    config and OSError naming the option when a port cannot be bound.
    """
    config.validate()
    raise_open_file_limit()
    tls_files = write_test_pki(config.tls_dir, ip_addresses=[config.host])
    tls_context = server_ssl_context(tls_files)
    stats = ServerStats(track_connections=config.stats_file is not None)
    helpers: list[_Helper] = []

    with _bound_sockets(config) as (ws_socket, wss_socket, https_socket):
        monitor = LoadMonitor()
        background = [asyncio.create_task(monitor.run()),
                      asyncio.create_task(_log_progress(monitor, stats, config.progress_interval))]
        handler = websocket_handler(stats)
        process_request = websocket_process_request(stats)
        ws_server = await serve_websockets(handler, sock=ws_socket, process_request=process_request)
        wss_server = await serve_websockets(handler, sock=wss_socket, ssl=tls_context, process_request=process_request)
        https_server = _HttpsServer(_https_config(build_https_app(stats, config.host), tls_files))
        https_task = asyncio.create_task(https_server.serve(sockets=[https_socket]), name="https")
        try:
            if not await _first_of(https_server.started_event.wait(), https_task):
                raise RuntimeError(f"HTTPS listener on {config.host} stopped during start-up; see the log above")
            for process in range(1, config.processes):
                helper = _Helper(process, config, ws_socket.getsockname()[1], wss_socket.getsockname()[1],
                                 tls_files, stats)
                helpers.append(helper)
                await helper.start()
            await _wait_ready(helpers)

            bound = BoundServer(
                pid=os.getpid(),
                host=config.host,
                ws_port=ws_socket.getsockname()[1],
                wss_port=wss_socket.getsockname()[1],
                https_port=https_socket.getsockname()[1],
                ca=str(tls_files.ca),
            )
            logger.info(
                "listening on %s: ws=%d wss=%d https=%d (CA %s) in %d processes",
                bound.host, bound.ws_port, bound.wss_port, bound.https_port, bound.ca, config.processes,
            )
            if on_ready is not None:
                on_ready(bound)

            if not await _first_of(stop.wait(), https_task):
                logger.error("HTTPS listener stopped on its own; stopping the WebSocket listeners too")
        finally:
            logger.info("stopping: closing listeners and open connections")
            # close() sends close code 1001 (going away) to every open WebSocket.
            ws_server.close()
            wss_server.close()
            https_server.should_exit = True
            await asyncio.gather(
                ws_server.wait_closed(), wss_server.wait_closed(), https_task,
                *(helper.stop() for helper in helpers),
            )
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    served = ", ".join(f"{name}={count}" for name, count in sorted(stats.events.items()))
    logger.info("served: %s", served or "nothing")
    if config.stats_file is not None:
        _write_stats(config.stats_file, stats)
    return stats


class _Helper:
    """One extra WebSocket process: starts it, waits for it to listen, collects its counts when it stops."""

    def __init__(
        self, process: int, config: ServerConfig, ws_port: int, wss_port: int, tls: TlsFiles, stats: ServerStats
    ) -> None:
        self.name = f"server process {process}"
        self.stats = stats
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.child = ChildProcess(
            self.name,
            "tools.traffic.server_worker",
            helper_config(
                process=process, host=config.host, ws_port=ws_port, wss_port=wss_port, tls=tls,
                track_connections=stats.connections is not None, progress_interval=config.progress_interval,
                log_level=logging.getLogger().getEffectiveLevel(),
            ),
            self._message,
            self._exited,
        )

    async def start(self) -> None:
        await self.child.start()

    def _message(self, message: Message) -> None:
        if message.get("kind") == "ready":
            self.ready.set()
        elif message.get("kind") == "connections":
            self.stats.merge({}, message["connections"])
        elif message.get("kind") == "stats":
            self.stats.merge(message["events"], [])
        else:
            logger.error("%s sent a message of unknown kind %r", self.name, message.get("kind"))

    def _exited(self, status: int) -> None:
        self.exited.set()
        if status != 0:
            logger.error("%s (pid %s) exited with status %d; see its log lines above", self.name, self.child.pid, status)

    async def stop(self) -> None:
        """Stop the process and collect its counts; log a failure instead of raising, so the others stop too."""
        try:
            await self.child.stop(PROCESS_STOP_TIMEOUT)
        except (OSError, ValueError) as exc:
            logger.error("%s (pid %s): failed to collect its counts: %s", self.name, self.child.pid, exc)


async def _wait_ready(helpers: list[_Helper]) -> None:
    """Wait until every extra process listens; raise RuntimeError naming one that exits or times out."""
    try:
        async with asyncio.timeout(PROCESS_READY_TIMEOUT):
            for helper in helpers:
                if not await _first_of(helper.ready.wait(), asyncio.ensure_future(helper.exited.wait())):
                    raise RuntimeError(f"{helper.name} exited during start-up; see its log lines above")
    except TimeoutError:
        raise RuntimeError(f"an extra server process was not listening after {PROCESS_READY_TIMEOUT:.0f} s") from None


async def _log_progress(monitor: LoadMonitor, stats: ServerStats, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        logger.info("%d WebSockets open, %d HTTPS requests in progress; %s",
                    stats.open_websockets, stats.open_requests, monitor.sample().describe())


async def _first_of(awaitable: Awaitable[object], task: asyncio.Future[Any]) -> bool:
    """Wait for `awaitable` or the end of `task`; return True if `awaitable` finished first."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return waiter.done() and not waiter.cancelled()


class _HttpsServer(uvicorn.Server):
    """uvicorn server that leaves signals to this process and reports when it is serving."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # serve() installs its own SIGINT/SIGTERM handlers by default; main() handles them instead.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.started_event.set()


def _https_config(app: object, tls_files: TlsFiles) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        ssl_certfile=str(tls_files.certificate),
        ssl_keyfile=str(tls_files.key),
        # Keep the logging this process set up instead of uvicorn's own dictConfig.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


@contextlib.contextmanager
def _bound_sockets(config: ServerConfig) -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        for option, port in (("--ws-port", config.ws_port), ("--wss-port", config.wss_port),
                             ("--https-port", config.https_port)):
            try:
                # Extra processes listen on the WebSocket ports too, which SO_REUSEPORT
                # allows only when every socket on the port sets it.
                reuse_port = config.processes > 1 and option != "--https-port"
                sockets.append(listening_socket(config.host, port, reuse_port))
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(
                    exc.errno,
                    f"cannot listen on {config.host}:{port} ({option}): {reason}; "
                    "free the port, choose another one, or pass 0 for any free port",
                ) from None
        yield sockets[0], sockets[1], sockets[2]
    finally:
        for sock in sockets:
            sock.close()


def _write_json(path: Path, content: dict[str, object]) -> None:
    """Write `content` to `path` atomically, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _write_stats(path: Path, stats: ServerStats) -> None:
    connections = sorted(stats.connections or ())
    _write_json(path, {
        "events": dict(sorted(stats.events.items())),
        "connections": [{"src_ip": ip, "src_port": port, "dst_port": server_port}
                        for ip, port, server_port in connections],
    })


def _port(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}; use 0-65535") from None


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m tools.traffic.server",
        description="Serve the aiflowd traffic scenarios: LLM chats, a voice assistant, IoT devices, chat, "
        "tickers and dashboards over WebSocket (plain and TLS); MCP tools, a streaming LLM API, pages, REST, "
        "downloads, SSE and update checks over HTTPS.",
    )

    parser.add_argument("--host", default="127.0.0.1",
                        help="listen address, on loopback or in 198.18.0.0/15 (default: %(default)s)")
    parser.add_argument("--ws-port", type=_port, default=80,
                        help="plain WebSocket port, 0 = any (default: %(default)s)")
    parser.add_argument("--wss-port", type=_port, default=443,
                        help="TLS WebSocket port, 0 = any (default: %(default)s)")
    parser.add_argument("--https-port", type=_port, default=8443,
                        help="HTTPS port for MCP, pages and REST, 0 = any (default: %(default)s)")
    parser.add_argument("--tls-dir", type=Path, required=True,
                        help="directory for the fresh test PKI: ca.pem, server.pem, server.key")
    parser.add_argument("--ready-file", type=Path,
                        help="JSON file written once every listener is bound: pid, host, ports, CA path")
    parser.add_argument("--stats-file", type=Path,
                        help="JSON file written at exit: counts of what was served and every client connection seen")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes serving WebSockets; HTTPS stays in the first (default: %(default)s)")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between load lines in the log (default: %(default)s)")
    args = parser.parse_args(argv)

    config = ServerConfig(
        host=args.host,
        ws_port=args.ws_port,
        wss_port=args.wss_port,
        https_port=args.https_port,
        tls_dir=args.tls_dir,
        ready_file=args.ready_file,
        stats_file=args.stats_file,
        processes=args.processes,
        progress_interval=args.progress_interval,
    )

    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


async def _main(config: ServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)

    def announce(bound: BoundServer) -> None:
        if config.ready_file is not None:
            _write_json(config.ready_file, asdict(bound))
        print(f"ready ws={bound.ws_port} wss={bound.wss_port} https={bound.https_port}", flush=True)

    await serve(config, stop, announce)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK and uvicorn log every session and request at INFO; keep their warnings only.
    for noisy in ("mcp", "uvicorn", "httpx2", "sse_starlette"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(_main(config))
    except (OSError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
