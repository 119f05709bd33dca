"""Child processes of the traffic client and server, and the JSON-line channel they report on.

A child is `python -m MODULE CONFIG_JSON`: it reads its configuration from
its one argument, writes one JSON object a line to stdout, logs to stderr
(inherited, so it lands in the parent's log), and stops on SIGTERM or
SIGINT. Commands from the parent, if any, arrive as lines on stdin. The end
of stdin means that no more commands will come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Message = dict[str, Any]
# Longest line a child may write, in bytes (asyncio's default is 64 KiB).
MAX_LINE_BYTES = 1 << 20


class ChildProcess:
    """One child process: start it, send it lines, hand each JSON line it writes to `on_message`.

    `on_message` runs in the parent's event loop for every line, in order;
    `on_exit` runs once after the child's stdout ended, with its exit status.
    """

    def __init__(
        self,
        name: str,
        module: str,
        config: Message,
        on_message: Callable[[Message], None],
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.on_message = on_message
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, json.dumps(self.config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_LINE_BYTES,
        )
        logger.debug("%s started as pid %d", self.name, self.process.pid)
        self._reader = asyncio.create_task(self._read(), name=f"{self.name} reader")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                logger.error("%s (pid %d) wrote a line that is not JSON: %r", self.name, self.process.pid, line[:200])
                continue
            self.on_message(message)
        status = await self.process.wait()
        if self.on_exit is not None:
            self.on_exit(status)

    def send_line(self, text: str) -> None:
        """Send one command line; a child that has already exited loses it."""
        assert self.process is not None and self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.write(text.encode("ascii") + b"\n")

    def close_input(self) -> None:
        """Close the child's stdin: it will get no more commands."""
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def wait(self) -> int:
        """Wait until the child has exited and every line it wrote has been handled; return its exit status."""
        assert self.process is not None and self._reader is not None
        await self._reader
        return self.process.returncode if self.process.returncode is not None else await self.process.wait()

    async def stop(self, timeout: float) -> int | None:
        """Send SIGTERM, wait up to `timeout` seconds for the child to finish its output, then SIGKILL it.

        Returns the exit status, or None for a child that never started.
        """
        if self.process is None or self._reader is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.wait()
        except TimeoutError:
            logger.error("%s (pid %d) still runs %.0f s after SIGTERM; killing it", self.name, self.process.pid, timeout)
            if self.process.returncode is None:
                self.process.kill()
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            return await self.process.wait()


def child_config(argv: list[str] | None = None) -> Message:
    """Return the configuration a child got as its one argument.

    Raises:
        SystemExit: with a message naming the problem when the argument is missing or not a JSON object.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        config = json.loads(args[0]) if len(args) == 1 else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: expected one argument, a JSON object; this program "
                         "is started by the traffic client or server, not by hand")
    return config


def emit(message: Message) -> None:
    """Write `message` to stdout as one JSON line and flush it, so the parent reads it at once."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def cancel_on_signals(task: asyncio.Task[Any], what: str) -> None:
    """Cancel `task` on the first SIGTERM or SIGINT; log and ignore later ones so clean-up can finish."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def handle(signal_number: int) -> None:
        if received:
            logger.warning("%s: signal %d ignored, already stopping", what, signal_number)
            return
        received.append(signal_number)
        task.cancel()

    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, handle, signal_number)
