"""Background reader of a WebSocket for scripted sessions.

A scripted side (a voice assistant device or server, a chat client or
server) sends on its own schedule while the other side's messages arrive at
any time. `Inbox.run` reads every message in a task of its own, counts JSON
messages by type (and by "type/state" when they have a state), counts binary
frames, and lets the script wait for a count with `Inbox.wait`. A reply that
must go out at once, such as a pong or a delivery receipt, is sent by the
`on_json` hook from the reading task; `on_binary` checks each binary frame.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

JsonHook = Callable[[dict[str, Any]], Awaitable[None]]
# Called for its ValueError only; what it returns is ignored.
BinaryCheck = Callable[[bytes], object]


class InboxError(Exception):
    """The peer sent something the script does not accept, or closed before a wait was over."""


class Inbox:
    """Counts of what arrived on `websocket`, and waits for them.

    `where` names the connection in error messages. `on_json` is awaited for
    every JSON message after it is counted. `on_binary` is called with every
    binary frame before it is counted and raises ValueError to reject it.
    """

    def __init__(
        self, websocket: Connection, where: str, on_json: JsonHook | None = None, on_binary: BinaryCheck | None = None
    ) -> None:
        self.websocket = websocket
        self.where = where
        self.on_json = on_json
        self.on_binary = on_binary
        self.counts: Counter[str] = Counter()
        self.binary_frames = 0
        self.binary_bytes = 0
        self.closed = False
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        """Read until the connection closes; wake every waiter on each message and at the end."""
        try:
            async for message in self.websocket:
                if isinstance(message, bytes):
                    if self.on_binary is not None:
                        try:
                            self.on_binary(message)
                        except ValueError as exc:
                            raise InboxError(f"{self.where}: binary frame {self.binary_frames}: {exc}") from None
                    self.binary_frames += 1
                    self.binary_bytes += len(message)
                else:
                    frame = parse_json_object(message, self.where)
                    kind = str(frame.get("type", ""))
                    self.counts[kind] += 1
                    if "state" in frame:
                        self.counts[f"{kind}/{frame['state']}"] += 1
                    if self.on_json is not None:
                        await self.on_json(frame)
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            async with self._changed:
                self._changed.notify_all()

    async def wait(self, ready: Callable[[], bool], description: str) -> None:
        """Wait until `ready()` is true.

        Raises:
            InboxError: naming the wait by `description` if the connection closes first.
        """
        async with self._changed:
            await self._changed.wait_for(lambda: ready() or self.closed)
        if not ready():
            raise InboxError(f"{self.where}: connection closed while waiting for {description}")

    async def wait_count(self, kind: str, count: int) -> None:
        """Wait until `count` JSON messages of `kind` ("type" or "type/state") have arrived."""
        await self.wait(lambda: self.counts[kind] >= count, f"{count} {kind!r} messages (got {self.counts[kind]})")

    async def wait_binary(self, count: int) -> None:
        """Wait until `count` binary frames have arrived."""
        await self.wait(lambda: self.binary_frames >= count, f"{count} binary frames (got {self.binary_frames})")

    async def wait_closed(self) -> None:
        """Wait until the peer has closed the connection and every message before the close is counted."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.closed)


def parse_json_object(message: str | bytes, where: str) -> dict[str, Any]:
    """Parse one JSON object from a text message.

    Raises:
        InboxError: naming `where` and the start of the message when it is not a JSON object.
    """
    try:
        frame = json.loads(message)
    except ValueError:
        raise InboxError(f"{where}: message is not JSON: {message[:80]!r}") from None
    if not isinstance(frame, dict):
        raise InboxError(f"{where}: message is not a JSON object: {message[:80]!r}")
    return frame


async def run_with_inbox(inbox: Inbox, script: Awaitable[None]) -> None:
    """Run `script` while `inbox` reads; stop reading when the script ends, re-raise what either raised."""
    reader = asyncio.create_task(inbox.run())
    try:
        await script
    finally:
        if reader.done():
            reader.result()
        else:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
