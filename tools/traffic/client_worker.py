"""Worker process of the traffic client: runs the sessions the client process hands it.

Started by the client as `python -m tools.traffic.client_worker CONFIG_JSON`
(see `children`). Each line on stdin is a session index to start. At the
end of stdin the worker lets its running sessions finish and exits 0; on
SIGTERM or SIGINT it cancels them, which closes their connections, and
exits 0 once their rows are out. On stdout it reports, one JSON object a
line:

    {"kind": "row", "row": {...LabelRow fields...}}   a connection closed
    {"kind": "end", "index": 12, "scenario": ..., "outcome": ..., "seconds": ..., "events": {...}}
    {"kind": "load", "cpu": 0.21, "lag_mean": 0.001, "lag_max": 0.012}   every progress interval

The configuration keys are those of `worker_config`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from typing import Any

from tools.traffic.children import Message, cancel_on_signals, child_config, emit
from tools.traffic.connections import SourcePorts
from tools.traffic.labels import LabelRow
from tools.traffic.monitor import LoadMonitor, raise_open_file_limit
from tools.traffic.runner import SessionEnd, SessionRunner
from tools.traffic.sessions import Target
from tools.traffic.tlsca import client_ssl_context

logger = logging.getLogger(__name__)


def worker_config(
    *, worker: int, workers: int, server: str, ws_port: int, wss_port: int, https_port: int, ca: str, seed: int,
    mix: list[tuple[str, str]], time_scale: float, progress_interval: float, log_level: int,
) -> Message:
    """Return the configuration of worker `worker` of `workers`, for `ChildProcess`."""
    return {
        "worker": worker, "workers": workers, "server": server, "ws_port": ws_port, "wss_port": wss_port,
        "https_port": https_port, "ca": ca, "seed": seed, "mix": [list(entry) for entry in mix],
        "time_scale": time_scale, "progress_interval": progress_interval, "log_level": log_level,
    }


async def _serve(config: dict[str, Any]) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    cancel_on_signals(main_task, f"client worker {config['worker']}")
    target = Target(
        host=config["server"],
        ws_port=config["ws_port"],
        wss_port=config["wss_port"],
        https_port=config["https_port"],
        ssl_context=client_ssl_context(config["ca"]),
        source_ports=SourcePorts.from_system(config["worker"], config["workers"]),
    )

    def row(label_row: LabelRow) -> None:
        emit({"kind": "row", "row": dataclasses.asdict(label_row)})

    def end(session: SessionEnd) -> None:
        emit({"kind": "end", **dataclasses.asdict(session)})

    runner = SessionRunner(
        target, config["seed"], [tuple(entry) for entry in config["mix"]], config["time_scale"], row, end
    )
    monitor = LoadMonitor()
    background = [asyncio.create_task(monitor.run()), asyncio.create_task(_report_load(monitor, config))]
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    try:
        async for line in commands:
            runner.start(int(line))
        await runner.wait()
    finally:
        await runner.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)


async def _report_load(monitor: LoadMonitor, config: dict[str, Any]) -> None:
    while True:
        await asyncio.sleep(config["progress_interval"])
        emit({"kind": "load", **dataclasses.asdict(monitor.sample())})


def main() -> int:
    config = child_config()
    logging.basicConfig(
        level=config["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s [worker {config['worker']}]: %(message)s",
    )
    for noisy in ("mcp", "httpx2", "httpcore2", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, config["log_level"]))
    raise_open_file_limit()
    try:
        asyncio.run(_serve(config))
    except asyncio.CancelledError:
        logger.info("stopped by signal; every closed connection has been reported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
