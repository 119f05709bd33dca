"""Client side of the WebSocket scenarios (families ws and wss): one connection a session.

Browser-like clients (LLM chats, chat, tickers, dashboards) offer
permessage-deflate as browsers do. Embedded devices (IoT profiles, the voice
assistant) do not: their WebSocket clients have no compression, and Opus
audio or JPEG data would not shrink anyway.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection

from tools.traffic.context import (
    BROWSER_USER_AGENT,
    TEST_TOKEN,
    SessionContext,
    SessionError,
    dumps,
    loads,
    session_runner,
)
from tools.traffic.inbox import Inbox, run_with_inbox
from tools.traffic.protocol import (
    CHAT_PATH,
    DASHBOARD_PATH,
    IOT_CAMERA_PATH,
    IOT_METER_PATH,
    IOT_SENSOR_PATH,
    IOT_TELEMETRY_PATH,
    LLM_CHAT_PATH,
    LLM_MODEL,
    TICKER_PATH,
    VOICE_FRAME_SECONDS,
    VOICE_PATH,
)
from tools.traffic.scripts import (
    AUDIO_SIZE_SPREAD,
    audio_frame,
    audio_payload,
    chat_counts,
    ticker_updates,
    voice_answer_frames,
    voice_frames,
    voice_microphone_frames,
)

FIRMWARE_VERSION = "2.4.1"
# Embedded WebSocket clients send no permessage-deflate offer and a terse user agent.
DEVICE_OPTIONS: dict[str, Any] = {"compression": None, "user_agent_header": None}
BROWSER_OPTIONS: dict[str, Any] = {"user_agent_header": BROWSER_USER_AGENT}


# --- LLM chats ---------------------------------------------------------------


@session_runner("llm_chat")
async def run_llm_chat(ctx: SessionContext) -> None:
    """Send prompts over one WebSocket; read each answer token by token until its done frame."""
    await _run_llm_turns(ctx, tokens_per_frame=1)


@session_runner("llm_batched")
async def run_llm_batched(ctx: SessionContext) -> None:
    """Send prompts over one WebSocket; read each answer a few tokens a frame until its done frame."""
    await _run_llm_turns(ctx, tokens_per_frame=ctx.plan.params["tokens_per_frame"])


async def _run_llm_turns(ctx: SessionContext, tokens_per_frame: int) -> None:
    plan = ctx.plan
    async with ctx.websocket(LLM_CHAT_PATH, **BROWSER_OPTIONS) as websocket:
        for turn, step in enumerate(plan.steps):
            await ctx.pace.sleep(step["think_time"])
            request_id = f"{plan.seed}-{plan.index}-{turn}"

            def prompt(text: str) -> dict[str, Any]:
                request = {
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
                if tokens_per_frame > 1:
                    request["tokens_per_frame"] = tokens_per_frame
                return request

            await websocket.send(ctx.json_with_text(prompt, step["prompt_bytes"]))
            tokens, frames = await _read_answer(websocket, request_id)
            if tokens != step["answer_tokens"]:
                raise SessionError(
                    f"response {request_id} had {tokens} tokens, expected {step['answer_tokens']} (max_tokens)"
                )
            ctx.events["turns"] += 1
            ctx.events["tokens"] += tokens
            ctx.events["token_frames"] += frames


async def _read_answer(websocket: ClientConnection, request_id: str) -> tuple[int, int]:
    """Read one streamed answer; return its token count and the number of frames that carried them."""
    tokens = frames = 0
    while True:
        frame = loads(await websocket.recv(), f"response {request_id}")
        kind = frame.get("type")
        if kind == "token":
            tokens += 1
            frames += 1
        elif kind == "delta":
            count = frame.get("tokens")
            if not isinstance(count, int) or count < 1:
                raise SessionError(f"response {request_id}: delta frame has tokens={count!r}, expected an integer >= 1")
            tokens += count
            frames += 1
        elif kind == "done":
            return tokens, frames
        elif kind == "error":
            raise SessionError(f"server rejected prompt {request_id}: {frame.get('message')}")
        else:
            raise SessionError(f"response {request_id}: unexpected frame type {kind!r}")


# --- voice assistant ---------------------------------------------------------

# The device's own MCP tools, as a xiaozhi-esp32 board lists them (names and schemas abridged).
DEVICE_TOOLS = (
    {"name": "self.get_device_status", "description": "Current volume, screen, battery and network state.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "self.audio_speaker.set_volume", "description": "Set the speaker volume.",
     "inputSchema": {"type": "object", "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
                     "required": ["volume"]}},
    {"name": "self.screen.set_brightness", "description": "Set the screen brightness.",
     "inputSchema": {"type": "object",
                     "properties": {"brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
                     "required": ["brightness"]}},
    {"name": "self.light.set_rgb", "description": "Set the color of the status light.",
     "inputSchema": {"type": "object", "properties": {"r": {"type": "integer"}, "g": {"type": "integer"},
                                                      "b": {"type": "integer"}},
                     "required": ["r", "g", "b"]}},
)


@session_runner("voice_assistant")
async def run_voice_assistant(ctx: SessionContext) -> None:
    """Play a xiaozhi-esp32 device: hello, then per exchange microphone audio, then the spoken answer.

    The device streams planned silence and speech frames, sends listen stop
    in manual mode, and waits for the server's tts stop. It answers the
    server's MCP requests (initialize, tools/list, tools/call) as they come.
    """
    plan = ctx.plan
    version = plan.params["protocol_version"]
    headers = {
        "Authorization": TEST_TOKEN,
        "Protocol-Version": str(version),
        "Device-Id": ":".join(f"{byte:02x}" for byte in ctx.rng.randbytes(6)),
        "Client-Id": str(uuid.UUID(bytes=ctx.rng.randbytes(16), version=4)),
        **ctx.plan_headers(),
    }
    async with ctx.websocket(VOICE_PATH, additional_headers=headers, **DEVICE_OPTIONS) as websocket:
        await websocket.send(dumps({
            "type": "hello",
            "version": version,
            "features": {"mcp": True},
            "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60},
        }))
        reply = loads(await websocket.recv(), "server hello")
        if reply.get("type") != "hello" or reply.get("transport") != "websocket":
            raise SessionError(f"server hello has type {reply.get('type')!r} and transport "
                               f"{reply.get('transport')!r}; expected 'hello' over 'websocket'")
        device = _VoiceDevice(ctx, websocket, str(reply.get("session_id", "")))
        inbox = Inbox(websocket, f"session {plan.index} ({plan.scenario})", on_json=device.answer_mcp,
                      on_binary=functools.partial(audio_payload, version))
        await run_with_inbox(inbox, device.converse(inbox))


class _VoiceDevice:
    def __init__(self, ctx: SessionContext, websocket: ClientConnection, session_id: str) -> None:
        self.ctx = ctx
        self.websocket = websocket
        self.session_id = session_id
        self.version = ctx.plan.params["protocol_version"]
        self.started = time.monotonic()

    async def converse(self, inbox: Inbox) -> None:
        plan = self.ctx.plan
        params = plan.params
        answer_frames = 0
        for exchange, step in enumerate(plan.steps):
            await self.send_json({"type": "listen", "state": "start", "mode": params["listen_mode"]})
            await self.stream(
                [params["silence_frame_bytes"]] * voice_frames(step["pause_seconds"])
                + [params["speech_frame_bytes"]] * voice_frames(step["speech_seconds"])
            )
            if params["listen_mode"] == "manual":
                await self.send_json({"type": "listen", "state": "stop"})
            await inbox.wait_count("tts/stop", exchange + 1)
            answer_frames += voice_answer_frames(step)
            if inbox.binary_frames != answer_frames:
                raise SessionError(
                    f"session {plan.index}: after exchange {exchange} the device had received "
                    f"{inbox.binary_frames} audio frames, expected {answer_frames}"
                )
            self.ctx.events["exchanges"] += 1
            self.ctx.events["microphone_frames"] += voice_microphone_frames(step)
        # After the last answer the device listens on until it gives up and closes the channel.
        await self.send_json({"type": "listen", "state": "start", "mode": params["listen_mode"]})
        linger_frames = voice_frames(params["linger_seconds"])
        await self.stream([params["silence_frame_bytes"]] * linger_frames)
        self.ctx.events["microphone_frames"] += linger_frames
        self.ctx.events["answer_frames"] += inbox.binary_frames

    async def stream(self, mean_sizes: list[float]) -> None:
        """Send one Opus frame every 60 ms, frame k about `mean_sizes[k]` bytes long."""
        rng = self.ctx.rng
        async for tick in self.ctx.pace.ticks(VOICE_FRAME_SECONDS, len(mean_sizes)):
            spread = rng.uniform(1 - AUDIO_SIZE_SPREAD, 1 + AUDIO_SIZE_SPREAD)
            size = max(1, round(mean_sizes[tick] * spread))
            timestamp_ms = round((time.monotonic() - self.started) * 1000)
            await self.websocket.send(audio_frame(self.version, rng.randbytes(size), timestamp_ms))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.websocket.send(dumps({"session_id": self.session_id, **message}))

    async def answer_mcp(self, frame: dict[str, Any]) -> None:
        """Answer a JSON-RPC request the server sends inside a {"type": "mcp"} message."""
        if frame.get("type") != "mcp":
            return
        request = frame.get("payload")
        if not isinstance(request, dict) or "id" not in request:
            raise SessionError(f"session {self.ctx.plan.index}: MCP message without a JSON-RPC request: {frame!r}")
        method = request.get("method")
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": "2024-11-05",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "xiaozhi-device", "version": FIRMWARE_VERSION},
            }
        elif method == "tools/list":
            result = {"tools": list(DEVICE_TOOLS)}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "true"}], "isError": False}
            self.ctx.events["tool_calls"] += 1
        else:
            raise SessionError(f"session {self.ctx.plan.index}: unexpected MCP method {method!r}")
        await self.send_json({"type": "mcp", "payload": {"jsonrpc": "2.0", "id": request["id"], "result": result}})


# --- IoT device profiles -----------------------------------------------------


def _device_hello(ctx: SessionContext, kind: str, **fields: Any) -> str:
    return dumps({
        "type": "hello",
        "device_id": f"{kind}-{ctx.plan.seed}-{ctx.plan.index}",
        "firmware": FIRMWARE_VERSION,
        **fields,
    })


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
        await websocket.send(dumps(hello))
        async with asyncio.TaskGroup() as tasks:
            responder = tasks.create_task(_answer_commands(websocket, ctx))
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


async def _answer_commands(websocket: ClientConnection, ctx: SessionContext) -> None:
    async for message in websocket:
        frame = loads(message, "server message")
        if frame.get("type") != "command":
            raise SessionError(f"unexpected server message type {frame.get('type')!r}; expected 'command'")
        await websocket.send(dumps({"type": "command_result", "id": frame.get("id"), "ok": True}))
        ctx.events["commands"] += 1


@session_runner("iot_sensor")
async def run_iot_sensor(ctx: SessionContext) -> None:
    """Wake, send the buffered readings one by one, each after the server acknowledged the last, and sleep."""
    plan = ctx.plan
    async with ctx.websocket(IOT_SENSOR_PATH, **DEVICE_OPTIONS) as websocket:
        await websocket.send(_device_hello(ctx, "envsensor", battery_pct=round(ctx.rng.uniform(20, 100))))
        for seq, step in enumerate(plan.steps):
            await ctx.pace.sleep(step["gap"])

            def reading(text: str) -> dict[str, Any]:
                return {
                    "type": "reading",
                    "seq": seq,
                    "ts": round(time.time(), 3),
                    "t": round(ctx.rng.uniform(-5.0, 30.0), 1),
                    "rh": round(ctx.rng.uniform(20.0, 90.0)),
                    "p": round(ctx.rng.uniform(980.0, 1040.0), 1),
                    "note": text,
                }

            await websocket.send(ctx.json_with_text(reading, step["reading_bytes"]))
            ack = loads(await websocket.recv(), f"acknowledgement of reading {seq}")
            if ack.get("type") != "ack" or ack.get("seq") != seq:
                raise SessionError(f"reading {seq} got {ack!r}; expected an ack with seq {seq}")
            ctx.events["readings"] += 1


@session_runner("iot_meter")
async def run_iot_meter(ctx: SessionContext) -> None:
    """Stream a power reading every period; the server only listens."""
    plan = ctx.plan
    period = plan.params["period"]
    async with ctx.websocket(IOT_METER_PATH, **DEVICE_OPTIONS) as websocket:
        await websocket.send(_device_hello(ctx, "powermeter", period_s=round(period, 3)))
        energy_wh = ctx.rng.uniform(1e4, 1e6)
        for seq, step in enumerate(plan.steps):
            power_w = ctx.rng.uniform(50.0, 3000.0)
            energy_wh += power_w * period / 3600

            def reading(text: str) -> dict[str, Any]:
                return {
                    "type": "reading",
                    "seq": seq,
                    "ts": round(time.time(), 3),
                    "power_w": round(power_w, 1),
                    "voltage_v": round(ctx.rng.uniform(225.0, 235.0), 1),
                    "current_a": round(power_w / 230.0, 3),
                    "frequency_hz": round(ctx.rng.uniform(49.95, 50.05), 3),
                    "energy_wh": round(energy_wh, 1),
                    "fw": text,
                }

            await websocket.send(ctx.json_with_text(reading, step["reading_bytes"]))
            ctx.events["readings"] += 1
            await ctx.pace.sleep(period * step["jitter"])


@session_runner("iot_camera")
async def run_iot_camera(ctx: SessionContext) -> None:
    """Send status reports every period; after some, a JPEG snapshot the server acknowledges."""
    plan = ctx.plan
    period = plan.params["period"]
    async with ctx.websocket(IOT_CAMERA_PATH, **DEVICE_OPTIONS) as websocket:
        await websocket.send(_device_hello(ctx, "camera", resolution="1280x720"))
        for seq, step in enumerate(plan.steps):
            await ctx.pace.sleep(period * step["jitter"])

            def status(text: str) -> dict[str, Any]:
                return {
                    "type": "status",
                    "seq": seq,
                    "ts": round(time.time(), 3),
                    "rssi_dbm": -round(ctx.rng.uniform(40, 85)),
                    "storage_free_mb": round(ctx.rng.uniform(100, 30000)),
                    "motion": step["snapshot"],
                    "detail": text,
                }

            await websocket.send(ctx.json_with_text(status, step["status_bytes"]))
            ctx.events["statuses"] += 1
            if step["snapshot"]:
                # A JPEG is compressed data, so random bytes stand in for it.
                await websocket.send(ctx.rng.randbytes(step["snapshot_bytes"]))
                ack = loads(await websocket.recv(), f"acknowledgement of snapshot {seq}")
                if ack.get("type") != "snapshot_ack" or ack.get("bytes") != step["snapshot_bytes"]:
                    raise SessionError(f"snapshot {seq} of {step['snapshot_bytes']} bytes got {ack!r}")
                ctx.events["snapshots"] += 1


# --- people and pushes -------------------------------------------------------


@session_runner("chat_messaging")
async def run_chat_messaging(ctx: SessionContext) -> None:
    """Chat at human pace: typing indicator, then the message; read receipts for what arrives; heartbeats."""
    plan = ctx.plan
    async with ctx.websocket(CHAT_PATH, additional_headers=ctx.plan_headers(), **BROWSER_OPTIONS) as websocket:

        async def answer(frame: dict[str, Any]) -> None:
            if frame.get("type") == "message":
                await websocket.send(dumps({"type": "read", "id": frame.get("id")}))

        await websocket.send(dumps({"type": "auth", "token": TEST_TOKEN, "client": "web", "resume": True}))
        inbox = Inbox(websocket, f"session {plan.index} ({plan.scenario})", on_json=answer)
        await run_with_inbox(inbox, _chat(ctx, websocket, inbox))


async def _chat(ctx: SessionContext, websocket: ClientConnection, inbox: Inbox) -> None:
    plan = ctx.plan
    await inbox.wait_count("history", 1)
    heartbeat = asyncio.create_task(_heartbeat(ctx, websocket))
    try:
        sent = received = 0
        for number, step in enumerate(plan.steps):
            if step["direction"] == "received":
                received += 1
                await inbox.wait_count("message", received)
                continue
            await ctx.pace.sleep(step["gap"])
            await websocket.send(dumps({"type": "typing", "state": "start"}))
            await ctx.pace.sleep(step["typing_seconds"])

            def message(text: str) -> dict[str, Any]:
                return {"type": "message", "id": f"{plan.index}-{number}", "ts": round(time.time(), 3), "text": text}

            await websocket.send(ctx.json_with_text(message, step["message_bytes"]))
            sent += 1
            await inbox.wait_count("delivered", sent)
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
    counts = chat_counts(plan)
    ctx.events["sent"] += counts["sent"]
    ctx.events["received"] += counts["received"]


async def _heartbeat(ctx: SessionContext, websocket: ClientConnection) -> None:
    while True:
        await ctx.pace.sleep(ctx.plan.params["heartbeat_period"])
        await websocket.send(dumps({"type": "ping", "ts": round(time.time(), 3)}))
        ctx.events["heartbeats"] += 1


@session_runner("ticker_push")
async def run_ticker_push(ctx: SessionContext) -> None:
    """Subscribe to symbols, take every planned update, then unsubscribe."""
    plan = ctx.plan
    symbols = [f"SYM{ctx.rng.randrange(10000):04d}" for _ in range(plan.params["symbols"])]
    expected = sum(ticker_updates(plan, step) for step in plan.steps)
    async with ctx.websocket(TICKER_PATH, additional_headers=ctx.plan_headers(), **BROWSER_OPTIONS) as websocket:
        await websocket.send(dumps({"op": "subscribe", "channels": symbols}))
        await _expect_type(websocket, "subscribed", f"session {plan.index}: subscription")
        await _count_updates(websocket, "update", expected, f"session {plan.index}: tick")
        await websocket.send(dumps({"op": "unsubscribe", "channels": symbols}))
    ctx.events["updates"] += expected


@session_runner("dashboard")
async def run_dashboard(ctx: SessionContext) -> None:
    """Subscribe to a dashboard, take its snapshot and every planned update, then leave."""
    plan = ctx.plan
    expected = sum(step["burst_updates"] for step in plan.steps)
    panels = [f"panel-{number}" for number in range(ctx.rng.randint(4, 16))]
    async with ctx.websocket(DASHBOARD_PATH, additional_headers=ctx.plan_headers(), **BROWSER_OPTIONS) as websocket:
        await websocket.send(dumps({"type": "subscribe", "dashboard": f"ops-{plan.index % 7}", "panels": panels}))
        await _expect_type(websocket, "snapshot", f"session {plan.index}: dashboard snapshot")
        await _count_updates(websocket, "update", expected, f"session {plan.index}: dashboard update")
    ctx.events["updates"] += expected


async def _expect_type(websocket: ClientConnection, kind: str, description: str) -> dict[str, Any]:
    frame = loads(await websocket.recv(), description)
    if frame.get("type") != kind:
        raise SessionError(f"{description} has type {frame.get('type')!r}, expected {kind!r}")
    return frame


async def _count_updates(websocket: ClientConnection, kind: str, expected: int, description: str) -> None:
    for _ in range(expected):
        await _expect_type(websocket, kind, description)
