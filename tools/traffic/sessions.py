"""Client side of every scenario: what one session sends and expects.

`RUNNERS` maps a scenario name to a coroutine function that plays one
`SessionPlan` through a `SessionContext`. A new scenario registers its
parameter table with `scenarios.register_scenario` and its runner here:

    @session_runner("voice_assistant")
    async def run_voice_assistant(ctx: SessionContext) -> None:
        async with ctx.websocket("/voice") as websocket:
            ...

Runners open connections only through `ctx.websocket` and `ctx.http_client`,
which give every connection its label row, and raise `SessionError` when a
server response does not match what the scenario expects.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import ClientConnection

from tools.traffic.connections import ConnectionClosed, open_websocket, recording_http_client
from tools.traffic.protocol import (
    IOT_TELEMETRY_PATH,
    LLM_CHAT_PATH,
    LLM_MODEL,
    MCP_HANDSHAKE_REVISION,
    MCP_PATH,
    MCP_TOOLS,
    REST_TELEMETRY_PATH,
    WWW_PREFIX,
)
from tools.traffic.scenarios import SessionPlan
from tools.traffic.text import filler

CLIENT_INFO = mcp_types.Implementation(name="aiflowd-traffic", version="0.1.0")

BROWSER_HEADERS = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-US,en;q=0.5",
}
ASSET_EXTENSIONS = ("css", "js", "png")
# The token is a fixed placeholder: the test server accepts any bearer token.
DEVICE_HEADERS = {
    "user-agent": "envsensor/2.4.1",
    "content-type": "application/json",
    "authorization": "Bearer test-device-token",
}
FIRMWARE_VERSION = "2.4.1"


class SessionError(Exception):
    """A server response does not match what the scenario expects."""


@dataclass(frozen=True)
class Target:
    """The traffic server: its address, listener ports and the TLS context that trusts its CA."""

    host: str
    ws_port: int
    wss_port: int
    https_port: int
    ssl_context: ssl.SSLContext


class Pace:
    """Real time divided by the time scale: waits shrink and rates grow by `time_scale`.

    NOTE: timers of the libraries are not scaled: httpx2 and uvicorn drop
    keep-alive connections idle for 5 s, websockets pings every 20 s. A scaled
    run therefore reuses HTTPS connections that a real-time run reopens after
    each think time, so only time scale 1 gives dataset-grade flows.
    """

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale

    def seconds(self, value: float) -> float:
        return value / self.time_scale

    def rate(self, value: float) -> float:
        return value * self.time_scale

    async def sleep(self, value: float) -> None:
        await asyncio.sleep(value / self.time_scale)


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
        if self.plan.family == "ws":
            uri = f"ws://{self.target.host}:{self.target.ws_port}{path}"
            return open_websocket(uri, self.target.host, self.target.ws_port, self.on_closed, **options)
        if self.plan.family == "wss":
            uri = f"wss://{self.target.host}:{self.target.wss_port}{path}"
            return open_websocket(
                uri, self.target.host, self.target.wss_port, self.on_closed, self.target.ssl_context, **options
            )
        raise ValueError(f"session {self.plan.index}: family {self.plan.family!r} has no WebSocket listener")

    def http_client(self, **options: Any) -> httpx2.AsyncClient:
        """Build an HTTPS client whose connections get label rows; use it with `async with`."""
        return recording_http_client(self.target.ssl_context, self.on_closed, **options)

    def https_url(self, path: str) -> str:
        return f"https://{self.target.host}:{self.target.https_port}{path}"

    def json_with_text(self, build: Callable[[str], dict[str, Any]], size: int) -> str:
        """Encode `build(text)` as compact JSON of about `size` bytes, filling `text` with words."""
        empty = _dumps(build(""))
        return _dumps(build(filler(self.rng, size - len(empty))))


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


@session_runner("llm_chat")
async def run_llm_chat(ctx: SessionContext) -> None:
    """Send prompts over one WebSocket; read each answer token by token until its done frame."""
    plan = ctx.plan
    async with ctx.websocket(LLM_CHAT_PATH) as websocket:
        for turn, step in enumerate(plan.steps):
            await ctx.pace.sleep(step["think_time"])
            request_id = f"{plan.seed}-{plan.index}-{turn}"

            def prompt(text: str) -> dict[str, Any]:
                return {
                    "type": "prompt",
                    "id": request_id,
                    "model": LLM_MODEL,
                    "stream": True,
                    "max_tokens": step["answer_tokens"],
                    "pacing": {
                        "first_token_s": ctx.pace.seconds(step["first_token_delay"]),
                        "tokens_per_s": ctx.pace.rate(step["token_rate"]),
                    },
                    "messages": [{"role": "user", "content": text}],
                }

            await websocket.send(ctx.json_with_text(prompt, step["prompt_bytes"]))
            tokens = await _read_answer(websocket, request_id)
            if tokens != step["answer_tokens"]:
                raise SessionError(
                    f"response {request_id} had {tokens} tokens, expected {step['answer_tokens']} (max_tokens)"
                )
            ctx.events["turns"] += 1
            ctx.events["tokens"] += tokens


async def _read_answer(websocket: ClientConnection, request_id: str) -> int:
    tokens = 0
    while True:
        frame = _loads(await websocket.recv(), f"response {request_id}")
        kind = frame.get("type")
        if kind == "token":
            tokens += 1
        elif kind == "done":
            return tokens
        elif kind == "error":
            raise SessionError(f"server rejected prompt {request_id}: {frame.get('message')}")
        else:
            raise SessionError(f"response {request_id}: unexpected frame type {kind!r}")


@session_runner("iot_telemetry")
async def run_iot_telemetry(ctx: SessionContext) -> None:
    """Send readings every period over one WebSocket and reply to the server's commands."""
    plan = ctx.plan
    period = plan.params["period"]
    device_id = f"sensor-{plan.seed}-{plan.index}"
    hello = {
        "type": "hello",
        "device_id": device_id,
        "firmware": FIRMWARE_VERSION,
        "period_s": ctx.pace.seconds(period),
        "command_probability": plan.params["command_probability"],
    }
    async with ctx.websocket(IOT_TELEMETRY_PATH) as websocket:
        await websocket.send(_dumps(hello))
        async with asyncio.TaskGroup() as tasks:
            responder = tasks.create_task(_answer_commands(websocket, ctx.events))
            for seq, step in enumerate(plan.steps):

                def reading(text: str) -> dict[str, Any]:
                    return {
                        "type": "reading",
                        "device_id": device_id,
                        "seq": seq,
                        "ts": round(time.time(), 3),
                        "temperature_c": round(ctx.rng.uniform(18.0, 26.0), 2),
                        "humidity_pct": round(ctx.rng.uniform(30.0, 60.0), 1),
                        "battery_v": round(ctx.rng.uniform(3.5, 4.1), 3),
                        "status": text,
                    }

                await websocket.send(ctx.json_with_text(reading, step["reading_bytes"]))
                ctx.events["readings"] += 1
                # Waiting after the last reading too leaves time for a command it triggers.
                await ctx.pace.sleep(period * step["jitter"])
            responder.cancel()


async def _answer_commands(websocket: ClientConnection, events: Counter[str]) -> None:
    async for message in websocket:
        frame = _loads(message, "server message")
        if frame.get("type") != "command":
            raise SessionError(f"unexpected server message type {frame.get('type')!r}; expected 'command'")
        await websocket.send(_dumps({"type": "command_result", "id": frame.get("id"), "ok": True}))
        events["commands"] += 1


@session_runner("mcp_tools")
async def run_mcp_tools(ctx: SessionContext) -> None:
    """Connect with the MCP SDK client, list the tools and call them with progress reporting."""
    plan = ctx.plan
    async with (
        ctx.http_client() as http,
        streamable_http_client(ctx.https_url(MCP_PATH), http_client=http) as (read_stream, write_stream),
        ClientSession(read_stream, write_stream, client_info=CLIENT_INFO) as session,
    ):
        if plan.params["protocol"] == MCP_HANDSHAKE_REVISION:
            await session.initialize()
        else:
            await session.discover()
        if session.protocol_version != plan.params["protocol"]:
            raise SessionError(
                f"negotiated MCP revision {session.protocol_version}, planned {plan.params['protocol']}"
            )
        listing = await session.list_tools()
        missing = set(MCP_TOOLS) - {tool.name for tool in listing.tools}
        if missing:
            raise SessionError(
                f"tools/list result is missing {sorted(missing)}; is the server an aiflowd traffic server?"
            )

        for call, step in enumerate(plan.steps):
            await ctx.pace.sleep(step["think_time"])
            progress_notifications = 0

            async def count_progress(progress: float, total: float | None, message: str | None) -> None:
                nonlocal progress_notifications
                progress_notifications += 1

            arguments = {
                MCP_TOOLS[step["tool"]]: filler(ctx.rng, step["argument_bytes"]),
                "max_chars": step["result_bytes"],
                "steps": step["progress_steps"],
                "step_seconds": ctx.pace.seconds(step["step_seconds"]),
            }
            result = await session.call_tool(step["tool"], arguments, progress_callback=count_progress)
            if result.is_error:
                raise SessionError(f"tools/call {call} ({step['tool']}) failed: {_text_of(result)[:200]}")
            if progress_notifications != step["progress_steps"]:
                raise SessionError(
                    f"tools/call {call} ({step['tool']}) sent {progress_notifications} progress notifications, "
                    f"expected {step['progress_steps']}"
                )
            ctx.events["tool_calls"] += 1
            ctx.events["progress_notifications"] += progress_notifications


def _text_of(result: mcp_types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))


@session_runner("https_web")
async def run_https_web(ctx: SessionContext) -> None:
    """Visit pages: the HTML, then its assets one after another over keep-alive connections."""
    async with ctx.http_client(headers=BROWSER_HEADERS) as http:
        for page_number, page in enumerate(ctx.plan.steps):
            if page_number:
                await ctx.pace.sleep(page["read_time"])
            html_url = ctx.https_url(f"{WWW_PREFIX}/{page['html_bytes']}/page-{page_number}.html")
            await _fetch(http, html_url, page["html_bytes"])
            for asset_number, size in enumerate(page["asset_bytes"]):
                extension = ASSET_EXTENSIONS[asset_number % len(ASSET_EXTENSIONS)]
                await _fetch(http, ctx.https_url(f"{WWW_PREFIX}/{size}/asset-{asset_number}.{extension}"), size)
            ctx.events["pages"] += 1
            ctx.events["assets"] += len(page["asset_bytes"])


async def _fetch(http: httpx2.AsyncClient, url: str, size: int) -> None:
    response = await http.get(url)
    response.raise_for_status()
    if len(response.content) != size:
        raise SessionError(f"GET {url} returned {len(response.content)} bytes, expected {size}")


@session_runner("https_rest")
async def run_https_rest(ctx: SessionContext) -> None:
    """POST a telemetry batch every period."""
    plan = ctx.plan
    device_id = f"meter-{plan.seed}-{plan.index}"
    async with ctx.http_client(headers=DEVICE_HEADERS) as http:
        for number, post in enumerate(plan.steps):
            if number:
                await ctx.pace.sleep(plan.params["period"] * post["jitter"])

            def batch(text: str) -> dict[str, Any]:
                return {
                    "device_id": device_id,
                    "seq": number,
                    "ts": round(time.time(), 3),
                    "readings": [round(ctx.rng.uniform(0.0, 100.0), 2) for _ in range(4)],
                    "status": text,
                }

            body = ctx.json_with_text(batch, post["body_bytes"])
            response = await http.post(ctx.https_url(REST_TELEMETRY_PATH), content=body)
            response.raise_for_status()
            ctx.events["posts"] += 1


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _loads(message: str | bytes, description: str) -> dict[str, Any]:
    try:
        frame = json.loads(message)
    except ValueError:
        raise SessionError(f"{description} is not JSON: {message[:80]!r}") from None
    if not isinstance(frame, dict):
        raise SessionError(f"{description} is not a JSON object: {message[:80]!r}")
    return frame
