"""The inputs of a session runner (its plan, the server, the pace) and the runner registry.

`RUNNERS` maps a scenario name to a coroutine function that plays one
`SessionPlan` through a `SessionContext`. A new scenario registers its
parameter table with `scenarios.register_scenario` and its runner with
`session_runner`:

    @session_runner("voice_assistant")
    async def run_voice_assistant(ctx: SessionContext) -> None:
        async with ctx.websocket(VOICE_PATH) as websocket:
            ...

Runners open connections only through `ctx.websocket` and `ctx.http_client`,
which give every connection its label row, and raise `SessionError` when a
server response does not match what the scenario expects.
"""

from __future__ import annotations

import json
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection

from tools.traffic.connections import ConnectionClosed, SourcePorts, open_websocket, recording_http_client
from tools.traffic.pacing import Pace
from tools.traffic.protocol import PLAN_HEADER, TIME_SCALE_HEADER
from tools.traffic.scenarios import SessionPlan
from tools.traffic.text import json_of_size

BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# The token is a fixed placeholder: the test server accepts any bearer token.
TEST_TOKEN = "Bearer test-device-token"


class SessionError(Exception):
    """A server response does not match what the scenario expects."""


@dataclass(frozen=True)
class Target:
    """The traffic server: its address, listener ports, the TLS context that trusts its CA, and client ports."""

    host: str
    ws_port: int
    wss_port: int
    https_port: int
    ssl_context: ssl.SSLContext
    source_ports: SourcePorts | None = None


@dataclass
class SessionContext:
    """Inputs of one runner: its plan, the server, the pace, a label hook and event counters."""

    plan: SessionPlan
    target: Target
    pace: Pace
    on_closed: ConnectionClosed
    events: Counter[str]

    def __post_init__(self) -> None:
        # Payload text comes from its own generator so plans stay independent of payloads.
        self.rng = random.Random(f"aiflowd-payload/{self.plan.seed}/{self.plan.index}")

    def websocket(self, path: str, **options: Any) -> AbstractAsyncContextManager[ClientConnection]:
        """Open a WebSocket to `path`: plain for family ws, TLS for family wss."""
        target = self.target
        if self.plan.family == "ws":
            uri = f"ws://{target.host}:{target.ws_port}{path}"
            return open_websocket(
                uri, target.host, target.ws_port, self.on_closed, source_ports=target.source_ports, **options
            )
        if self.plan.family == "wss":
            uri = f"wss://{target.host}:{target.wss_port}{path}"
            return open_websocket(
                uri, target.host, target.wss_port, self.on_closed, target.ssl_context,
                source_ports=target.source_ports, **options,
            )
        raise ValueError(f"session {self.plan.index}: family {self.plan.family!r} has no WebSocket listener")

    def http_client(self, **options: Any) -> httpx2.AsyncClient:
        """Build an HTTPS client whose connections get label rows; use it with `async with`."""
        return recording_http_client(self.target.ssl_context, self.on_closed, self.target.source_ports, **options)

    def https_url(self, path: str) -> str:
        return f"https://{self.target.host}:{self.target.https_port}{path}"

    def plan_headers(self) -> dict[str, str]:
        """Return the request headers that name this session's plan and time scale to the server."""
        return {PLAN_HEADER: self.plan.reference, TIME_SCALE_HEADER: repr(self.pace.time_scale)}

    def json_with_text(self, build: Callable[[str], dict[str, Any]], size: int) -> str:
        """Encode `build(text)` as compact JSON of about `size` bytes, filling `text` with words."""
        return json_of_size(self.rng, build, size)


Runner = Callable[[SessionContext], Awaitable[None]]
RUNNERS: dict[str, Runner] = {}


def session_runner(scenario: str) -> Callable[[Runner], Runner]:
    """Register the decorated coroutine function as the runner of `scenario`."""

    def register(runner: Runner) -> Runner:
        if scenario in RUNNERS:
            raise ValueError(f"a runner for scenario {scenario!r} is already registered ({RUNNERS[scenario].__name__})")
        RUNNERS[scenario] = runner
        return runner

    return register


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def loads(message: str | bytes, description: str) -> dict[str, Any]:
    """Parse a JSON object, raising SessionError naming `description` when it is not one."""
    try:
        frame = json.loads(message)
    except ValueError:
        raise SessionError(f"{description} is not JSON: {message[:80]!r}") from None
    if not isinstance(frame, dict):
        raise SessionError(f"{description} is not a JSON object: {message[:80]!r}")
    return frame
