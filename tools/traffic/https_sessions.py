"""Client side of the HTTPS scenarios (family mcp): MCP over the official SDK and ordinary HTTPS.

Each session uses one httpx2 client. Its pool keeps a connection idle for
5 s at most, as browsers and HTTP libraries do, so a session whose waits
are longer opens a new TCP connection after each wait.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tools.traffic.context import BROWSER_USER_AGENT, TEST_TOKEN, SessionContext, SessionError, dumps, loads, session_runner
from tools.traffic.protocol import (
    FILES_PREFIX,
    LLM_COMPLETIONS_PATH,
    LLM_MODEL,
    MCP_HANDSHAKE_REVISION,
    MCP_PATH,
    MCP_TOOLS,
    REST_POLL_PREFIX,
    REST_TELEMETRY_PATH,
    SSE_PATH,
    UPDATE_PATH,
    WWW_PREFIX,
)
from tools.traffic.text import filler

CLIENT_INFO = mcp_types.Implementation(name="aiflowd-traffic", version="0.1.0")

BROWSER_HEADERS = {
    "user-agent": BROWSER_USER_AGENT,
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-US,en;q=0.5",
}
ASSET_EXTENSIONS = ("css", "js", "png")
DEVICE_HEADERS = {
    "user-agent": "envsensor/2.4.1",
    "content-type": "application/json",
    "authorization": TEST_TOKEN,
}
LLM_CLIENT_HEADERS = {
    "user-agent": "llm-client/1.0",
    "content-type": "application/json",
    "accept": "text/event-stream",
    "authorization": TEST_TOKEN,
}
POLLER_HEADERS = {"user-agent": "statuspoller/1.3", "accept": "application/json"}
UPDATER_HEADERS = {"user-agent": "ExampleApp/3.2.1 (X11; Linux x86_64)", "accept": "application/json"}
APP_VERSION = "3.2.1"


# --- AI ----------------------------------------------------------------------


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


@session_runner("llm_chunked")
async def run_llm_chunked(ctx: SessionContext) -> None:
    """POST each prompt with the conversation so far; read the answer streamed as chunked server-sent events."""
    plan = ctx.plan
    tokens_per_chunk = plan.params["tokens_per_chunk"]
    history: list[dict[str, str]] = []
    async with ctx.http_client(headers=LLM_CLIENT_HEADERS) as http:
        for turn, step in enumerate(plan.steps):
            if turn:
                await ctx.pace.sleep(step["think_time"])
            history.append({"role": "user", "content": filler(ctx.rng, step["prompt_bytes"])})
            request = {
                "model": LLM_MODEL,
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": step["answer_tokens"],
                "messages": history,
                "pacing": {
                    "first_token_s": ctx.pace.seconds(step["first_token_delay"]),
                    "tokens_per_s": ctx.pace.rate(step["token_rate"]),
                    "tokens_per_chunk": tokens_per_chunk,
                },
            }
            where = f"session {plan.index} turn {turn}"
            answer, chunks, usage = await _read_completion(http, ctx.https_url(LLM_COMPLETIONS_PATH), request, where)
            expected_chunks = -(-step["answer_tokens"] // tokens_per_chunk)
            if usage != step["answer_tokens"] or chunks != expected_chunks:
                raise SessionError(
                    f"{where}: answer of {chunks} chunks and {usage} tokens, expected {expected_chunks} chunks "
                    f"and {step['answer_tokens']} tokens"
                )
            history.append({"role": "assistant", "content": answer})
            ctx.events["turns"] += 1
            ctx.events["chunks"] += chunks
            ctx.events["tokens"] += usage


async def _read_completion(
    http: httpx2.AsyncClient, url: str, request: dict[str, Any], where: str
) -> tuple[str, int, int]:
    """Stream one completion; return its text, its content chunks and the completion tokens its usage reports.

    The body is read to its end after "data: [DONE]", as SDK clients do, so
    the connection goes back to the pool instead of being dropped.
    """
    parts: list[str] = []
    chunks = 0
    usage = -1
    done = False
    async with http.stream("POST", url, content=dumps(request)) as response:
        _check_status(response, 200, where)
        _check_event_stream(response, where)
        async for event in _sse_events(response):
            if event.comment or done:
                continue
            if event.data == "[DONE]":
                done = True
                continue
            chunk = loads(event.data, f"{where}: completion chunk")
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens", -1)
            for choice in chunk.get("choices", ()):
                content = choice.get("delta", {}).get("content")
                if content:
                    parts.append(content)
                    chunks += 1
    if not done:
        raise SessionError(f"{where}: the event stream ended without data: [DONE]")
    return "".join(parts), chunks, usage


# --- not AI ------------------------------------------------------------------


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


@session_runner("rest_polling")
async def run_rest_polling(ctx: SessionContext) -> None:
    """GET a resource every period with If-None-Match; an unchanged resource returns 304 without a body."""
    plan = ctx.plan
    etag = None
    async with ctx.http_client(headers=POLLER_HEADERS) as http:
        for number, poll in enumerate(plan.steps):
            if number:
                await ctx.pace.sleep(plan.params["period"] * poll["jitter"])
            # The first poll has no ETag to send, so it always gets the resource.
            changed = poll["changed"] or etag is None
            url = ctx.https_url(f"{REST_POLL_PREFIX}/{poll['response_bytes']}?changed={int(changed)}")
            response = await http.get(url, headers={"if-none-match": etag} if etag else None)
            if changed:
                _check_status(response, 200, f"GET {url}")
                if len(response.content) != poll["response_bytes"]:
                    raise SessionError(f"GET {url} returned {len(response.content)} bytes, "
                                       f"expected {poll['response_bytes']}")
                etag = response.headers.get("etag")
                ctx.events["changed"] += 1
            else:
                _check_status(response, 304, f"GET {url}")
                ctx.events["not_modified"] += 1


@session_runner("file_download")
async def run_file_download(ctx: SessionContext) -> None:
    """Download files one after another; the server paces each at the planned bandwidth."""
    plan = ctx.plan
    rate = ctx.pace.rate(plan.params["bandwidth"])
    async with ctx.http_client(headers={"user-agent": BROWSER_USER_AGENT, "accept": "*/*"}) as http:
        for number, file in enumerate(plan.steps):
            if number:
                await ctx.pace.sleep(file["gap"])
            url = ctx.https_url(f"{FILES_PREFIX}/{file['file_bytes']}/file-{number}.bin?rate={rate:.0f}")
            received = 0
            async with http.stream("GET", url) as response:
                _check_status(response, 200, f"GET {url}")
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
            if received != file["file_bytes"]:
                raise SessionError(f"GET {url} delivered {received} bytes, expected {file['file_bytes']}")
            ctx.events["files"] += 1
            ctx.events["bytes"] += received


@session_runner("sse_notifications")
async def run_sse_notifications(ctx: SessionContext) -> None:
    """Hold a text/event-stream open, take every planned notification, linger, then close the stream."""
    plan = ctx.plan
    expected = len(plan.steps)
    headers = {
        "user-agent": BROWSER_USER_AGENT,
        "accept": "text/event-stream",
        "cache-control": "no-cache",
        **ctx.plan_headers(),
    }
    where = f"session {plan.index} ({plan.scenario})"
    received = 0
    async with ctx.http_client(headers=headers) as http, http.stream("GET", ctx.https_url(SSE_PATH)) as response:
        _check_status(response, 200, where)
        _check_event_stream(response, where)
        async for event in _sse_events(response):
            if event.comment:
                ctx.events["keepalives"] += 1
                continue
            if event.event != "notification":
                raise SessionError(f"{where}: unexpected event {event.event!r}")
            loads(event.data, f"{where}: notification")
            received += 1
            if received == expected:
                break
        if received != expected:
            raise SessionError(f"{where}: the stream ended after {received} of {expected} notifications")
        # The tab stays open a little longer; leaving the block closes the stream and its connection.
        await ctx.pace.sleep(plan.params["linger_seconds"])
    ctx.events["notifications"] += received


@session_runner("update_check")
async def run_update_check(ctx: SessionContext) -> None:
    """Check for an update now and then: a small response, or a manifest when an update is available."""
    plan = ctx.plan
    async with ctx.http_client(headers=UPDATER_HEADERS) as http:
        for number, check in enumerate(plan.steps):
            if number:
                await ctx.pace.sleep(check["gap"])
            query = (f"product=exampleapp&version={APP_VERSION}&channel=stable"
                     f"&available={int(check['update_available'])}&size={check['manifest_bytes']}")
            url = ctx.https_url(f"{UPDATE_PATH}?{query}")
            response = await http.get(url)
            _check_status(response, 200, f"GET {url}")
            answer = loads(response.content, f"GET {url}")
            if answer.get("update_available") is not check["update_available"]:
                raise SessionError(f"GET {url} returned update_available={answer.get('update_available')!r}, "
                                   f"expected {check['update_available']}")
            ctx.events["checks"] += 1
            ctx.events["updates_offered"] += int(check["update_available"])


# --- helpers -----------------------------------------------------------------


def _check_status(response: httpx2.Response, expected: int, where: str) -> None:
    if response.status_code != expected:
        raise SessionError(f"{where}: status {response.status_code}, expected {expected}")


def _check_event_stream(response: httpx2.Response, where: str) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise SessionError(f"{where}: content type {content_type!r}, expected text/event-stream")


@dataclass(frozen=True)
class _SseEvent:
    """One server-sent event, or one comment line (`comment` set, `data` holding its text)."""

    event: str
    data: str
    comment: bool = False


async def _sse_events(response: httpx2.Response) -> AsyncIterator[_SseEvent]:
    """Parse a text/event-stream body into events and comment lines (fields "event" and "data" only)."""
    event = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield _SseEvent("", line[1:].strip(), comment=True)
        elif not line:
            if data:
                yield _SseEvent(event, "\n".join(data))
            event, data = "message", []
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
