"""Server side of every scenario: WebSocket handlers, MCP tools and HTTPS routes.

WebSocket handlers are registered by path in `WEBSOCKET_ROUTES`. HTTPS routes
and MCP tools are built into one Starlette app by `build_https_app`. Every
handler validates each request against the limits in `protocol`, replies with
an error naming the field when it is invalid, logs the rejection and counts
what it served in `ServerStats.events`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WebSocketRequest
from websockets.http11 import Response as WebSocketResponse

from tools.traffic.protocol import (
    IOT_TELEMETRY_PATH,
    LLM_CHAT_PATH,
    LLM_MODEL,
    MAX_ANSWER_TOKENS,
    MAX_BODY_BYTES,
    MAX_PROGRESS_STEPS,
    MAX_TOKENS_PER_SECOND,
    MAX_WAIT_SECONDS,
    MCP_PATH,
    REST_TELEMETRY_PATH,
    WWW_PREFIX,
)
from tools.traffic.text import filler, llm_tokens

logger = logging.getLogger(__name__)

IOT_COMMANDS = ("set_interval", "blink_led", "sync_clock", "report_config")


class ServerStats:
    """Counts of what the server served and, optionally, every TCP connection it saw.

    Connections are (client address, client port, server port) triples. They
    are kept only when `track_connections` is set, because a long run makes
    hundreds of thousands of them.
    """

    def __init__(self, track_connections: bool = False) -> None:
        self.events: Counter[str] = Counter()
        self.connections: set[tuple[str, int, int]] | None = set() if track_connections else None

    def saw_connection(self, client: tuple[str, int], server_port: int) -> None:
        if self.connections is not None:
            self.connections.add((client[0], client[1], server_port))


class RequestError(ValueError):
    """A client request asks for something invalid or out of limits."""


def _number(message: dict[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = message.get(name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        expected = "an integer" if integer else "a number"
        raise RequestError(f"field {name!r} must be {expected} in [{low}, {high}], got {value!r}")
    return value


def _object(message: str | bytes, description: str) -> dict[str, Any]:
    try:
        value = json.loads(message)
    except ValueError:
        raise RequestError(f"{description} is not JSON") from None
    if not isinstance(value, dict):
        raise RequestError(f"{description} is not a JSON object")
    return value


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _peer(connection: ServerConnection) -> str:
    host, port = connection.remote_address[:2]
    return f"{host}:{port}"


def _peer_of(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


WebSocketHandler = Callable[[ServerConnection, ServerStats], Awaitable[None]]
WEBSOCKET_ROUTES: dict[str, WebSocketHandler] = {}


def websocket_route(path: str) -> Callable[[WebSocketHandler], WebSocketHandler]:
    """Register the decorated coroutine function as the WebSocket handler of `path`."""

    def register(handler: WebSocketHandler) -> WebSocketHandler:
        if path in WEBSOCKET_ROUTES:
            raise ValueError(f"WebSocket path {path!r} already has a handler ({WEBSOCKET_ROUTES[path].__name__})")
        WEBSOCKET_ROUTES[path] = handler
        return handler

    return register


def websocket_process_request(stats: ServerStats) -> Callable[[ServerConnection, WebSocketRequest], Any]:
    """Build the websockets `process_request` hook: record the peer, respond 404 to unknown paths."""

    def process_request(connection: ServerConnection, request: WebSocketRequest) -> WebSocketResponse | None:
        stats.saw_connection(connection.remote_address, connection.local_address[1])
        if urlsplit(request.path).path not in WEBSOCKET_ROUTES:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {request.path}\n")
        return None

    return process_request


def websocket_handler(stats: ServerStats) -> Callable[[ServerConnection], Awaitable[None]]:
    """Build the websockets connection handler that dispatches on the request path."""

    async def handle(connection: ServerConnection) -> None:
        path = urlsplit(connection.request.path).path
        try:
            await WEBSOCKET_ROUTES[path](connection, stats)
        except ConnectionClosed as exc:
            stats.events["websocket_closed_early"] += 1
            logger.warning("%s from %s: connection closed before the server was done: %s",
                           path, _peer(connection), exc)

    return handle


@websocket_route(LLM_CHAT_PATH)
async def serve_llm_chat(websocket: ServerConnection, stats: ServerStats) -> None:
    """Answer each prompt with max_tokens token frames at the requested pace, then a done frame."""
    async for message in websocket:
        try:
            prompt = _object(message, "prompt")
            request_id = str(prompt.get("id", ""))
            max_tokens = _number(prompt, "max_tokens", 1, MAX_ANSWER_TOKENS, integer=True)
            pacing = prompt.get("pacing")
            if not isinstance(pacing, dict):
                raise RequestError("field 'pacing' must be an object with first_token_s and tokens_per_s")
            first_token_s = _number(pacing, "first_token_s", 0.0, MAX_WAIT_SECONDS)
            tokens_per_s = _number(pacing, "tokens_per_s", 1.0 / MAX_WAIT_SECONDS, MAX_TOKENS_PER_SECOND)
        except RequestError as exc:
            stats.events["llm_rejected"] += 1
            logger.warning("%s from %s: invalid prompt: %s", LLM_CHAT_PATH, _peer(websocket), exc)
            await websocket.send(_dumps({"type": "error", "message": f"invalid prompt: {exc}"}))
            continue

        # The generated text depends only on the request id, so a rerun streams the same text.
        rng = random.Random(f"answer/{request_id}")
        mean_gap = 1.0 / tokens_per_s
        await asyncio.sleep(first_token_s)
        for index, token in enumerate(llm_tokens(rng, max_tokens)):
            if index:
                # Gaps vary around the mean because inference servers emit tokens unevenly (estimate: +-50%).
                await asyncio.sleep(mean_gap * rng.uniform(0.5, 1.5))
            await websocket.send(_dumps({"type": "token", "index": index, "text": token}))
        prompt_tokens = len(message) // 4
        await websocket.send(
            _dumps({
                "type": "done",
                "id": request_id,
                "model": LLM_MODEL,
                "finish_reason": "length",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens},
            })
        )
        stats.events["llm_answers"] += 1
        stats.events["llm_tokens"] += max_tokens


@websocket_route(IOT_TELEMETRY_PATH)
async def serve_iot_telemetry(websocket: ServerConnection, stats: ServerStats) -> None:
    """Take a hello and readings; after a reading, send a command with the device's command probability."""
    try:
        hello = _object(await websocket.recv(), "hello")
        if hello.get("type") != "hello":
            raise RequestError(f"first message must have type 'hello', got {hello.get('type')!r}")
        device_id = str(hello.get("device_id", ""))
        command_probability = _number(hello, "command_probability", 0.0, 1.0)
    except RequestError as exc:
        stats.events["iot_rejected"] += 1
        logger.warning("%s from %s: invalid hello: %s", IOT_TELEMETRY_PATH, _peer(websocket), exc)
        # 1008: policy violation. A close reason must fit in 123 bytes.
        await websocket.close(1008, f"invalid hello: {exc}"[:120])
        return

    rng = random.Random(f"commands/{device_id}")
    commands_sent = 0
    async for message in websocket:
        try:
            frame = _object(message, "device message")
        except RequestError as exc:
            stats.events["iot_rejected"] += 1
            logger.warning("%s device %s: %s", IOT_TELEMETRY_PATH, device_id, exc)
            await websocket.close(1008, str(exc))
            return
        kind = frame.get("type")
        if kind == "reading":
            stats.events["iot_readings"] += 1
            if rng.random() < command_probability:
                commands_sent += 1
                command = {"type": "command", "id": f"{device_id}/{commands_sent}", "name": rng.choice(IOT_COMMANDS)}
                await websocket.send(_dumps(command))
                stats.events["iot_commands"] += 1
        elif kind == "command_result":
            stats.events["iot_command_results"] += 1
        else:
            stats.events["iot_rejected"] += 1
            logger.warning("%s device %s: unknown message type %r", IOT_TELEMETRY_PATH, device_id, kind)
            await websocket.close(1008, f"unknown message type {kind!r}"[:120])
            return


def build_mcp_server(stats: ServerStats) -> MCPServer:
    """Build the MCP server with the tools of the `mcp_tools` scenario.

    Each tool sends `steps` progress notifications, `step_seconds` apart, then
    returns `max_chars` characters of text. These three arguments are how the
    traffic client steers a call; the first argument is the subject text.
    """
    server = MCPServer(
        "aiflowd-traffic",
        instructions="Test tools of the aiflowd traffic generator. Results are synthetic text.",
    )

    async def work(ctx: Context, tool: str, subject: str, max_chars: int, steps: int, step_seconds: float) -> str:
        limits = {"max_chars": max_chars, "steps": steps, "step_seconds": step_seconds}
        _number(limits, "max_chars", 0, MAX_BODY_BYTES, integer=True)
        _number(limits, "steps", 0, MAX_PROGRESS_STEPS, integer=True)
        _number(limits, "step_seconds", 0.0, MAX_WAIT_SECONDS)
        stats.events["mcp_tool_calls"] += 1
        for step in range(1, steps + 1):
            await asyncio.sleep(step_seconds)
            await ctx.report_progress(step, steps, f"{tool}: step {step} of {steps}")
            stats.events["mcp_progress_sent"] += 1
        return filler(random.Random(f"{tool}/{subject}"), max_chars)

    # structured_output=False: a str result would otherwise also go out as
    # structuredContent {"result": ...}, sending every result twice.
    @server.tool(structured_output=False)
    async def search_documents(query: str, max_chars: int, steps: int, step_seconds: float, ctx: Context) -> str:
        """Search the document index; returns matching passages."""
        return await work(ctx, "search_documents", query, max_chars, steps, step_seconds)

    @server.tool(structured_output=False)
    async def run_query(sql: str, max_chars: int, steps: int, step_seconds: float, ctx: Context) -> str:
        """Run a read-only SQL query; returns the rows as text."""
        return await work(ctx, "run_query", sql, max_chars, steps, step_seconds)

    @server.tool(structured_output=False)
    async def summarize_file(path: str, max_chars: int, steps: int, step_seconds: float, ctx: Context) -> str:
        """Summarize a file of the workspace."""
        return await work(ctx, "summarize_file", path, max_chars, steps, step_seconds)

    return server


class SiteContent:
    """Deterministic page and asset bodies of any size up to `MAX_BODY_BYTES`.

    Text is cut from one block made at start-up and images from one block of
    random bytes, so serving a page costs a slice, not text generation.
    """

    MEDIA_TYPES = {
        "html": "text/html; charset=utf-8",
        "css": "text/css",
        "js": "text/javascript",
        "png": "image/png",
    }

    def __init__(self) -> None:
        rng = random.Random("aiflowd-site")
        self._text = filler(rng, MAX_BODY_BYTES).encode("ascii")
        # Random bytes stand in for images, which are already compressed.
        self._binary = rng.randbytes(MAX_BODY_BYTES)

    def body(self, extension: str, size: int) -> bytes:
        if extension == "png":
            return self._binary[:size]
        if extension == "html":
            head = b"<!doctype html><html><head><title>aiflowd test page</title></head><body><p>"
            tail = b"</p></body></html>\n"
            if size >= len(head) + len(tail):
                return head + self._text[: size - len(head) - len(tail)] + tail
        return self._text[:size]


def build_https_app(stats: ServerStats, host: str) -> ASGIApp:
    """Build the HTTPS application: MCP on `MCP_PATH`, pages under `WWW_PREFIX`, REST telemetry.

    `host` is the listen address; MCP requests must carry it in their Host
    header (the SDK's DNS rebinding protection).
    """
    mcp_server = build_mcp_server(stats)
    site = SiteContent()

    @mcp_server.custom_route(f"{WWW_PREFIX}/{{size:int}}/{{name}}", methods=["GET"])
    async def www(request: Request) -> Response:
        size = request.path_params["size"]
        name = request.path_params["name"]
        extension = name.rpartition(".")[2]
        if extension not in SiteContent.MEDIA_TYPES:
            logger.warning("GET %s from %s: unknown file type %r", request.url.path, _peer_of(request), extension)
            return Response(f"unknown file type {extension!r}\n", status_code=404, media_type="text/plain")
        if size > MAX_BODY_BYTES:
            logger.warning("GET %s from %s: size %d over the limit", request.url.path, _peer_of(request), size)
            return Response(
                f"size {size} is over the limit of {MAX_BODY_BYTES} bytes\n", status_code=400, media_type="text/plain"
            )
        stats.events["web_pages" if extension == "html" else "web_assets"] += 1
        return Response(site.body(extension, size), media_type=SiteContent.MEDIA_TYPES[extension])

    @mcp_server.custom_route(REST_TELEMETRY_PATH, methods=["POST"])
    async def telemetry(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            logger.warning("POST %s from %s: body of %d bytes over the limit", REST_TELEMETRY_PATH,
                           _peer_of(request), len(body))
            return JSONResponse({"error": f"body over the limit of {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            batch = _object(body, "request body")
        except RequestError as exc:
            logger.warning("POST %s from %s: %s", REST_TELEMETRY_PATH, _peer_of(request), exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        stats.events["rest_posts"] += 1
        return JSONResponse({"status": "stored", "seq": batch.get("seq")}, status_code=201)

    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{host}:*"],
        allowed_origins=[f"https://{host}:*"],
    )
    app: Starlette = mcp_server.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=security, host=host
    )
    return _ConnectionRecorder(app, stats)


class _ConnectionRecorder:
    """ASGI middleware that records the client end of every HTTP request's connection."""

    def __init__(self, app: ASGIApp, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client") and scope.get("server"):
            self.stats.saw_connection(tuple(scope["client"]), scope["server"][1])
        await self.app(scope, receive, send)
