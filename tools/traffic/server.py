"""Traffic server: WebSocket (plain and TLS) and HTTPS with MCP, in one asyncio process.

    python -m tools.traffic.server --host 198.19.0.2 --ws-port 80 --wss-port 443 \\
        --https-port 8443 --tls-dir /tmp/tls --ready-file /tmp/server.ready

At start the server writes a fresh test PKI into --tls-dir (ca.pem for the
client) and binds every listener. Only then does it write the ready file, JSON
with the bound ports (so port 0 for any free port works), and print the line
`ready ws=PORT wss=PORT https=PORT` on stdout. SIGTERM or SIGINT stops it:
listeners close, open WebSockets get a close frame, HTTPS requests get
`SHUTDOWN_GRACE_SECONDS` to finish, and the exit status is 0.

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

import uvicorn
from websockets.asyncio.server import serve as serve_websockets

from tools.traffic.connections import check_test_address
from tools.traffic.handlers import (
    ServerStats,
    build_https_app,
    websocket_handler,
    websocket_process_request,
)
from tools.traffic.tlsca import TlsFiles, server_ssl_context, write_test_pki

logger = logging.getLogger(__name__)

# How long open HTTPS requests (MCP GET streams above all) may run on after a
# stop before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 3.0


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

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        check_test_address(self.host, "--host")
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
    tls_files = write_test_pki(config.tls_dir, ip_addresses=[config.host])
    tls_context = server_ssl_context(tls_files)
    stats = ServerStats(track_connections=config.stats_file is not None)

    with _bound_sockets(config) as (ws_socket, wss_socket, https_socket):
        handler = websocket_handler(stats)
        process_request = websocket_process_request(stats)
        ws_server = await serve_websockets(handler, sock=ws_socket, process_request=process_request)
        wss_server = await serve_websockets(handler, sock=wss_socket, ssl=tls_context, process_request=process_request)
        https_server = _HttpsServer(_https_config(build_https_app(stats, config.host), tls_files))
        https_task = asyncio.create_task(https_server.serve(sockets=[https_socket]), name="https")
        try:
            if not await _first_of(https_server.started_event.wait(), https_task):
                raise RuntimeError(f"HTTPS listener on {config.host} stopped during start-up; see the log above")

            bound = BoundServer(
                pid=os.getpid(),
                host=config.host,
                ws_port=ws_socket.getsockname()[1],
                wss_port=wss_socket.getsockname()[1],
                https_port=https_socket.getsockname()[1],
                ca=str(tls_files.ca),
            )
            logger.info(
                "listening on %s: ws=%d wss=%d https=%d (CA %s)",
                bound.host, bound.ws_port, bound.wss_port, bound.https_port, bound.ca,
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
            await asyncio.gather(ws_server.wait_closed(), wss_server.wait_closed(), https_task)

    served = ", ".join(f"{name}={count}" for name, count in sorted(stats.events.items()))
    logger.info("served: %s", served or "nothing")
    if config.stats_file is not None:
        _write_stats(config.stats_file, stats)
    return stats


async def _first_of(awaitable: Awaitable[object], task: asyncio.Task[None]) -> bool:
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
                sockets.append(socket.create_server((config.host, port)))
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
        description="Serve the aiflowd traffic scenarios: LLM chat and IoT telemetry over WebSocket "
        "(plain and TLS), MCP tools, web pages and REST telemetry over HTTPS.",
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
    args = parser.parse_args(argv)

    config = ServerConfig(
        host=args.host,
        ws_port=args.ws_port,
        wss_port=args.wss_port,
        https_port=args.https_port,
        tls_dir=args.tls_dir,
        ready_file=args.ready_file,
        stats_file=args.stats_file,
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
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
