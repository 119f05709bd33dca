"""Server side of the HTTPS scenarios: the MCP server and the ordinary HTTPS routes in one Starlette app.

`build_https_app` mounts the official SDK's Streamable HTTP transport on
`MCP_PATH` and adds the routes of the other HTTPS scenarios to the same app.
Every route validates its request against the limits in `protocol`,
responds to an invalid one with 4xx naming the field, logs the rejection,
and counts what it served in `ServerStats.events`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tools.traffic.pacing import Pace
from tools.traffic.protocol import (
    FILES_PREFIX,
    LLM_COMPLETIONS_PATH,
    LLM_MODEL,
    MAX_ANSWER_TOKENS,
    MAX_BODY_BYTES,
    MAX_DOWNLOAD_BYTES,
    MAX_DOWNLOAD_RATE,
    MAX_PROGRESS_STEPS,
    MAX_TOKENS_PER_FRAME,
    MAX_TOKENS_PER_SECOND,
    MAX_WAIT_SECONDS,
    MCP_PATH,
    REST_POLL_PREFIX,
    REST_TELEMETRY_PATH,
    SSE_PATH,
    UPDATE_PATH,
    WWW_PREFIX,
)
from tools.traffic.routes import RequestError, ServerStats, dumps, json_object, number, peer_of, scripted_session
from tools.traffic.scenarios import SessionPlan
from tools.traffic.text import filler, json_of_size, llm_tokens

logger = logging.getLogger(__name__)

# Downloads go out in pieces of this many bytes, each after the time the
# planned bandwidth needs for it.
DOWNLOAD_CHUNK_BYTES = 64 * 1024
SSE_RETRY_MS = 10000


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
        number(limits, "max_chars", 0, MAX_BODY_BYTES, integer=True)
        number(limits, "steps", 0, MAX_PROGRESS_STEPS, integer=True)
        number(limits, "step_seconds", 0.0, MAX_WAIT_SECONDS)
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
    """Deterministic page, asset, document and file bodies.

    Text is cut from one block made at start-up and binary data from one
    block of random bytes, so serving a body costs a slice, not text
    generation. Downloads larger than the block repeat it.
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
        # Random bytes stand in for images and files, which are already compressed.
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

    def json_document(self, size: int) -> bytes:
        """Return a JSON object of exactly `size` bytes when `size` >= 12, else a shorter one."""
        head, tail = b'{"items":"', b'"}'
        return head + self._text[: max(0, size - len(head) - len(tail))] + tail

    def binary(self, offset: int, size: int) -> bytes:
        """Return `size` bytes of the binary block from `offset`, wrapping around at its end."""
        start = offset % len(self._binary)
        piece = self._binary[start:start + size]
        return piece if len(piece) == size else piece + self._binary[: size - len(piece)]


def build_https_app(stats: ServerStats, host: str) -> ASGIApp:
    """Build the HTTPS application: MCP on `MCP_PATH` and the routes of every other HTTPS scenario.

    `host` is the listen address; MCP requests must carry it in their Host
    header (the SDK's DNS rebinding protection).
    """
    mcp_server = build_mcp_server(stats)
    site = SiteContent()
    routes = _Routes(stats, site)
    for path, endpoint, methods in (
        (f"{WWW_PREFIX}/{{size:int}}/{{name}}", routes.www, ["GET"]),
        (REST_TELEMETRY_PATH, routes.telemetry, ["POST"]),
        (LLM_COMPLETIONS_PATH, routes.completions, ["POST"]),
        (f"{REST_POLL_PREFIX}/{{size:int}}", routes.poll, ["GET"]),
        (f"{FILES_PREFIX}/{{size:int}}/{{name}}", routes.download, ["GET"]),
        (SSE_PATH, routes.events, ["GET"]),
        (UPDATE_PATH, routes.update, ["GET"]),
    ):
        mcp_server.custom_route(path, methods=methods)(endpoint)

    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{host}:*"],
        allowed_origins=[f"https://{host}:*"],
    )
    app: Starlette = mcp_server.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=security, host=host
    )
    return _ConnectionRecorder(app, stats)


def _reject(request: Request, status: int, message: str, stats: ServerStats) -> Response:
    stats.events["https_rejected"] += 1
    logger.warning("%s %s from %s: %s", request.method, request.url.path, peer_of(request), message)
    return JSONResponse({"error": message}, status_code=status)


async def _body_object(request: Request, description: str) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES} bytes")
    return json_object(body, description)


class _Routes:
    """Endpoints of the ordinary HTTPS scenarios and of the streaming LLM API."""

    def __init__(self, stats: ServerStats, site: SiteContent) -> None:
        self.stats = stats
        self.site = site

    async def www(self, request: Request) -> Response:
        size = request.path_params["size"]
        extension = request.path_params["name"].rpartition(".")[2]
        if extension not in SiteContent.MEDIA_TYPES:
            return _reject(request, 404, f"unknown file type {extension!r}", self.stats)
        if size > MAX_BODY_BYTES:
            return _reject(request, 400, f"size {size} is over the limit of {MAX_BODY_BYTES} bytes", self.stats)
        self.stats.events["web_pages" if extension == "html" else "web_assets"] += 1
        return Response(self.site.body(extension, size), media_type=SiteContent.MEDIA_TYPES[extension])

    async def telemetry(self, request: Request) -> Response:
        try:
            batch = await _body_object(request, "request body")
        except RequestError as exc:
            return _reject(request, 400, str(exc), self.stats)
        self.stats.events["rest_posts"] += 1
        return JSONResponse({"status": "stored", "seq": batch.get("seq")}, status_code=201)

    async def completions(self, request: Request) -> Response:
        """Stream a chat completion as server-sent events in a chunked response, OpenAI style."""
        try:
            body = await _body_object(request, "request body")
            if body.get("stream") is not True:
                raise RequestError("field 'stream' must be true; this endpoint only streams")
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise RequestError("field 'messages' must be a non-empty list")
            max_tokens = number(body, "max_tokens", 1, MAX_ANSWER_TOKENS, integer=True)
            pacing = body.get("pacing")
            if not isinstance(pacing, dict):
                raise RequestError("field 'pacing' must be an object with first_token_s, tokens_per_s, tokens_per_chunk")
            first_token_s = number(pacing, "first_token_s", 0.0, MAX_WAIT_SECONDS)
            tokens_per_s = number(pacing, "tokens_per_s", 1.0 / MAX_WAIT_SECONDS, MAX_TOKENS_PER_SECOND)
            tokens_per_chunk = number(pacing, "tokens_per_chunk", 1, MAX_TOKENS_PER_FRAME, integer=True)
        except RequestError as exc:
            return _reject(request, 400, str(exc), self.stats)
        prompt_bytes = sum(len(str(message)) for message in body["messages"])
        events = self._completion_events(max_tokens, first_token_s, tokens_per_s, tokens_per_chunk, prompt_bytes)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def _completion_events(
        self, max_tokens: int, first_token_s: float, tokens_per_s: float, tokens_per_chunk: int, prompt_bytes: int
    ) -> AsyncIterator[str]:
        rng = random.Random(f"completion/{max_tokens}/{prompt_bytes}")
        completion_id = f"chatcmpl-{rng.getrandbits(96):024x}"
        created = int(time.time())

        def event(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": LLM_MODEL,
                     "choices": [] if delta is None else
                     [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
            return f"data: {dumps(chunk)}\n\n"

        tokens = llm_tokens(rng, max_tokens)
        await asyncio.sleep(first_token_s)
        yield event({"role": "assistant", "content": ""})
        for index in range(0, max_tokens, tokens_per_chunk):
            batch = tokens[index:index + tokens_per_chunk]
            if index:
                # Gaps vary around the mean because inference servers emit tokens unevenly (estimate: +-50%).
                await asyncio.sleep(len(batch) / tokens_per_s * rng.uniform(0.5, 1.5))
            yield event({"content": "".join(batch)})
            self.stats.events["completion_chunks"] += 1
        yield event({}, "length")
        usage = {"prompt_tokens": prompt_bytes // 4, "completion_tokens": max_tokens,
                 "total_tokens": prompt_bytes // 4 + max_tokens}
        yield event(None, usage=usage)
        yield "data: [DONE]\n\n"
        self.stats.events["completion_answers"] += 1
        self.stats.events["completion_tokens"] += max_tokens

    async def poll(self, request: Request) -> Response:
        """Return the resource, or 304 Not Modified when changed=0 and the client sent an ETag."""
        size = request.path_params["size"]
        changed = request.query_params.get("changed", "1")
        if size > MAX_BODY_BYTES or changed not in ("0", "1"):
            return _reject(request, 400, f"size {size} must be at most {MAX_BODY_BYTES} and changed "
                           f"{changed!r} must be 0 or 1", self.stats)
        etag = f'W/"{size:x}"'
        if changed == "0" and request.headers.get("if-none-match"):
            self.stats.events["poll_not_modified"] += 1
            return Response(status_code=304, headers={"etag": etag, "cache-control": "no-cache"})
        self.stats.events["poll_changed"] += 1
        return Response(self.site.json_document(size), media_type="application/json",
                        headers={"etag": etag, "cache-control": "no-cache"})

    async def download(self, request: Request) -> Response:
        """Send a file of the requested size, paced at `rate` bytes a second, with a Content-Length."""
        size = request.path_params["size"]
        try:
            rate = float(request.query_params.get("rate", ""))
        except ValueError:
            rate = -1.0
        if not 0 < size <= MAX_DOWNLOAD_BYTES or not 1.0 <= rate <= MAX_DOWNLOAD_RATE:
            return _reject(request, 400, f"size {size} must be in [1, {MAX_DOWNLOAD_BYTES}] and rate "
                           f"{request.query_params.get('rate')!r} in [1, {MAX_DOWNLOAD_RATE:g}] bytes/s", self.stats)
        name = request.path_params["name"]
        headers = {"content-length": str(size), "content-disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(self._file_chunks(size, rate), media_type="application/octet-stream",
                                 headers=headers)

    async def _file_chunks(self, size: int, rate: float) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while sent < size:
            piece = self.site.binary(sent, min(DOWNLOAD_CHUNK_BYTES, size - sent))
            yield piece
            sent += len(piece)
            delay = start + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        self.stats.events["downloads"] += 1
        self.stats.events["download_bytes"] += sent

    async def events(self, request: Request) -> Response:
        """Hold a text/event-stream open and send the planned notifications, with keep-alive comments."""
        try:
            session = scripted_session(request.headers, "sse_notifications", family="mcp")
        except RequestError as exc:
            return _reject(request, 400, str(exc), self.stats)
        self.stats.events["sse_streams"] += 1
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(self._notifications(session.plan, session.pace),
                                 media_type="text/event-stream", headers=headers)

    async def _notifications(self, plan: SessionPlan, pace: Pace) -> AsyncIterator[str]:
        rng = random.Random(f"sse/{plan.reference}")
        period = plan.params["keepalive_period"]
        yield f"retry: {SSE_RETRY_MS}\n\n"
        for position, step in enumerate(plan.steps):
            async for comment in self._keepalives(pace, step["gap"], period):
                yield comment

            def notification(text: str) -> dict[str, Any]:
                return {"id": f"n{position}", "kind": rng.choice(("mention", "update", "reminder")), "title": text}

            data = json_of_size(rng, notification, step["notification_bytes"])
            yield f"id: {position}\nevent: notification\ndata: {data}\n\n"
            self.stats.events["sse_notifications"] += 1
        # The client closes the stream when its tab closes; until then only comments go out.
        async for comment in self._keepalives(pace, MAX_WAIT_SECONDS, period):
            yield comment

    async def _keepalives(self, pace: Pace, seconds: float, period: float) -> AsyncIterator[str]:
        """Wait `seconds` (scaled), yielding an SSE comment line every `period` seconds meanwhile."""
        while seconds > period:
            await pace.sleep(period)
            seconds -= period
            self.stats.events["sse_keepalives"] += 1
            yield ": keep-alive\n\n"
        await pace.sleep(seconds)

    async def update(self, request: Request) -> Response:
        """Respond to an update check: a small "up to date" object, or a manifest of the requested size."""
        query = request.query_params
        available = query.get("available") == "1"
        try:
            size = int(query.get("size", "0"))
        except ValueError:
            size = -1
        if not query.get("version") or not 0 <= size <= MAX_BODY_BYTES:
            return _reject(request, 400, f"query needs a version and a size in [0, {MAX_BODY_BYTES}], got "
                           f"{str(query)[:120]!r}", self.stats)
        self.stats.events["update_checks"] += 1
        if not available:
            return JSONResponse({"update_available": False, "latest": query["version"]})
        self.stats.events["updates_offered"] += 1

        def manifest(text: str) -> dict[str, Any]:
            return {"update_available": True, "latest": "9.9.9", "url": f"https://updates.invalid/{size}.bin",
                    "sha256": "0" * 64, "notes": text}

        return Response(json_of_size(random.Random(size), manifest, size), media_type="application/json")


class _ConnectionRecorder:
    """ASGI middleware that records the client end of every HTTP request's connection."""

    def __init__(self, app: ASGIApp, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("client") and scope.get("server"):
            self.stats.saw_connection(tuple(scope["client"]), scope["server"][1])
        self.stats.open_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.stats.open_requests -= 1
