"""Extra WebSocket process of the traffic server, sharing its ports through SO_REUSEPORT.

Started by the server as `python -m tools.traffic.server_worker CONFIG_JSON`
(see `children`) when it runs with --processes N > 1. It listens on the
server's WebSocket ports (plain and TLS) next to the main process, so the
kernel spreads new connections over the processes. HTTPS stays in the main
process only, because MCP sessions of the handshake revision keep their
state in the process that created them. On stdout it reports, one JSON
object a line:

    {"kind": "ready"}                                           both listeners are bound
    {"kind": "connections", "connections": [[ip, port, server_port], ...]}   at exit, in chunks
    {"kind": "stats", "events": {...}}                          at exit, last

It stops on SIGTERM, SIGINT or the end of stdin (the server is gone):
listeners close, open WebSockets get a close frame, then the stats go out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.server import serve as serve_websockets

from tools.traffic.children import cancel_on_signals, child_config, emit
from tools.traffic.handlers import ServerStats, websocket_handler, websocket_process_request
from tools.traffic.monitor import LoadMonitor, raise_open_file_limit
from tools.traffic.tlsca import TlsFiles, server_ssl_context

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
# Connections a "connections" line carries: about 40 kB of JSON, well below the parent's line limit.
CONNECTIONS_PER_LINE = 1000


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """Bind and listen on `host`:`port`; with `reuse_port`, other processes may listen on it too."""
    return socket.create_server((host, port), backlog=LISTEN_BACKLOG, reuse_port=reuse_port)


def helper_config(
    *, process: int, host: str, ws_port: int, wss_port: int, tls: TlsFiles, track_connections: bool,
    progress_interval: float, log_level: int,
) -> dict[str, Any]:
    """Return the configuration of extra server process `process`, for `ChildProcess`."""
    return {
        "process": process, "host": host, "ws_port": ws_port, "wss_port": wss_port,
        "tls": {"ca": str(tls.ca), "certificate": str(tls.certificate), "key": str(tls.key)},
        "track_connections": track_connections, "progress_interval": progress_interval, "log_level": log_level,
    }


async def _serve(config: dict[str, Any]) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    cancel_on_signals(main_task, f"server process {config['process']}")
    tls = TlsFiles(**{name: Path(path) for name, path in config["tls"].items()})
    stats = ServerStats(track_connections=config["track_connections"])
    handler = websocket_handler(stats)
    process_request = websocket_process_request(stats)
    with (
        listening_socket(config["host"], config["ws_port"], reuse_port=True) as ws_socket,
        listening_socket(config["host"], config["wss_port"], reuse_port=True) as wss_socket,
    ):
        ws_server = await serve_websockets(handler, sock=ws_socket, process_request=process_request)
        wss_server = await serve_websockets(
            handler, sock=wss_socket, ssl=server_ssl_context(tls), process_request=process_request
        )
        monitor = LoadMonitor()
        background = [asyncio.create_task(monitor.run()), asyncio.create_task(_log_progress(monitor, stats, config))]
        emit({"kind": "ready"})
        try:
            await _until_stdin_ends()
        finally:
            # close() sends close code 1001 (going away) to every open WebSocket.
            ws_server.close()
            wss_server.close()
            await asyncio.gather(ws_server.wait_closed(), wss_server.wait_closed())
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            connections = sorted(stats.connections or ())
            for start in range(0, len(connections), CONNECTIONS_PER_LINE):
                emit({"kind": "connections", "connections": connections[start:start + CONNECTIONS_PER_LINE]})
            emit({"kind": "stats", "events": dict(stats.events)})


async def _until_stdin_ends() -> None:
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


async def _log_progress(monitor: LoadMonitor, stats: ServerStats, config: dict[str, Any]) -> None:
    while True:
        await asyncio.sleep(config["progress_interval"])
        logger.info("%d WebSockets open; %s", stats.open_websockets, monitor.sample().describe())


def main() -> int:
    config = child_config()
    logging.basicConfig(
        level=config["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s [process {config['process']}]: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    raise_open_file_limit()
    try:
        asyncio.run(_serve(config))
    except asyncio.CancelledError:
        logger.info("stopped by signal")
    except OSError as exc:
        logger.error("failed to listen on %s: %s", config["host"], exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
