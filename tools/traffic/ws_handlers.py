"""Server side of the WebSocket scenarios, registered by path in `routes.WEBSOCKET_ROUTES`.

Reactive handlers (LLM chats, IoT devices) respond to each request as it
specifies. Scripted handlers (voice assistant, chat, ticker, dashboard) draw the
session's plan from the opening handshake's headers and play the server's
part of it. Every handler counts what it served in `ServerStats.events`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection

from tools.traffic.inbox import Inbox, parse_json_object, run_with_inbox
from tools.traffic.protocol import (
    CHAT_PATH,
    DASHBOARD_PATH,
    IOT_CAMERA_PATH,
    IOT_METER_PATH,
    IOT_SENSOR_PATH,
    IOT_TELEMETRY_PATH,
    LLM_CHAT_PATH,
    LLM_MODEL,
    MAX_ANSWER_TOKENS,
    MAX_TOKENS_PER_FRAME,
    MAX_TOKENS_PER_SECOND,
    MAX_WAIT_SECONDS,
    TICKER_PATH,
    VOICE_FRAME_SECONDS,
    VOICE_PATH,
)
from tools.traffic.routes import (
    RequestError,
    ScriptedSession,
    ServerStats,
    dumps,
    json_object,
    number,
    peer,
    session_of,
    websocket_route,
)
from tools.traffic.scripts import (
    AUDIO_SIZE_SPREAD,
    audio_frame,
    audio_payload,
    ticker_updates,
    voice_frames,
    voice_microphone_frames,
)
from tools.traffic.text import filler, json_of_size, llm_tokens

logger = logging.getLogger(__name__)

IOT_COMMANDS = ("set_interval", "blink_led", "sync_clock", "report_config")
EMOTIONS = ("neutral", "happy", "thinking", "surprised", "relaxed")
# Speech runs at about 15 characters a second (2.5 words of 6 characters), for the stt and sentence texts.
SPOKEN_CHARACTERS_PER_SECOND = 15


# --- LLM chats ---------------------------------------------------------------


@websocket_route(LLM_CHAT_PATH)
async def serve_llm_chat(websocket: ServerConnection, stats: ServerStats) -> None:
    """Answer each prompt with max_tokens tokens at the requested pace, then a done frame.

    Tokens go one a "token" frame, or `tokens_per_frame` a "delta" frame
    when the prompt sets that field.
    """
    async for message in websocket:
        try:
            prompt = json_object(message, "prompt")
            request_id = str(prompt.get("id", ""))
            max_tokens = number(prompt, "max_tokens", 1, MAX_ANSWER_TOKENS, integer=True)
            tokens_per_frame = 1
            if "tokens_per_frame" in prompt:
                tokens_per_frame = number(prompt, "tokens_per_frame", 1, MAX_TOKENS_PER_FRAME, integer=True)
            pacing = prompt.get("pacing")
            if not isinstance(pacing, dict):
                raise RequestError("field 'pacing' must be an object with first_token_s and tokens_per_s")
            first_token_s = number(pacing, "first_token_s", 0.0, MAX_WAIT_SECONDS)
            tokens_per_s = number(pacing, "tokens_per_s", 1.0 / MAX_WAIT_SECONDS, MAX_TOKENS_PER_SECOND)
        except RequestError as exc:
            stats.events["llm_rejected"] += 1
            logger.warning("%s from %s: invalid prompt: %s", LLM_CHAT_PATH, peer(websocket), exc)
            await websocket.send(dumps({"type": "error", "message": f"invalid prompt: {exc}"}))
            continue

        # The generated text depends only on the request id, so a rerun streams the same text.
        rng = random.Random(f"answer/{request_id}")
        mean_gap = 1.0 / tokens_per_s
        tokens = llm_tokens(rng, max_tokens)
        await asyncio.sleep(first_token_s)
        for index in range(0, max_tokens, tokens_per_frame):
            batch = tokens[index:index + tokens_per_frame]
            if index:
                # Gaps vary around the mean because inference servers emit tokens unevenly (estimate: +-50%).
                await asyncio.sleep(mean_gap * len(batch) * rng.uniform(0.5, 1.5))
            if tokens_per_frame == 1:
                await websocket.send(dumps({"type": "token", "index": index, "text": batch[0]}))
            else:
                await websocket.send(
                    dumps({"type": "delta", "index": index, "tokens": len(batch), "text": "".join(batch)})
                )
            stats.events["llm_frames"] += 1
        prompt_tokens = len(message) // 4
        await websocket.send(
            dumps({
                "type": "done",
                "id": request_id,
                "model": LLM_MODEL,
                "finish_reason": "length",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens},
            })
        )
        stats.events["llm_answers"] += 1
        stats.events["llm_tokens"] += max_tokens


# --- voice assistant ---------------------------------------------------------


@websocket_route(VOICE_PATH, scenario="voice_assistant")
async def serve_voice_assistant(websocket: ServerConnection, stats: ServerStats) -> None:
    """Play the server of a xiaozhi-esp32 conversation.

    After the hellos, list the device's tools over MCP. In each exchange,
    wait for the planned microphone frames (and listen stop in manual mode).
    After the response delay, send stt, llm and tts start and maybe call a
    device tool. Then stream each sentence's audio, one frame every 60 ms,
    and send tts stop.
    """
    session = session_of(websocket)
    version = session.plan.params["protocol_version"]
    header = websocket.request.headers.get("Protocol-Version")
    if header != str(version):
        raise RequestError(f"header 'Protocol-Version' is {header!r}, but the plan uses version {version}")
    hello = parse_json_object(await websocket.recv(), "device hello")
    audio = hello.get("audio_params")
    if hello.get("type") != "hello" or not isinstance(audio, dict) or audio.get("format") != "opus":
        raise RequestError(f"first message must be a hello with Opus audio_params, got {str(hello)[:120]}")

    server = _VoiceServer(websocket, session, stats)
    await websocket.send(dumps({
        "type": "hello",
        "transport": "websocket",
        "session_id": server.session_id,
        "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60},
    }))
    await run_with_inbox(server.inbox, server.converse())
    stats.events["voice_sessions"] += 1
    stats.events["voice_microphone_frames"] += server.inbox.binary_frames


class _VoiceServer:
    def __init__(self, websocket: ServerConnection, session: ScriptedSession, stats: ServerStats) -> None:
        self.websocket = websocket
        self.plan = session.plan
        self.pace = session.pace
        self.stats = stats
        self.rng = random.Random(f"voice/{self.plan.reference}")
        self.session_id = str(uuid.UUID(bytes=self.rng.randbytes(16), version=4))
        version = self.plan.params["protocol_version"]
        self.inbox = Inbox(websocket, f"{VOICE_PATH} session {self.plan.reference}",
                           on_binary=functools.partial(audio_payload, version))
        self.requests = 0
        self.started = asyncio.get_running_loop().time()

    async def converse(self) -> None:
        params = self.plan.params
        await self.call_device("initialize", {
            "protocolVersion": "2024-11-05",
            "capabilities": {},
            "clientInfo": {"name": "aiflowd-voice-server", "version": "0.1.0"},
        })
        await self.call_device("tools/list", {"cursor": ""})
        microphone_frames = 0
        for exchange, step in enumerate(self.plan.steps):
            microphone_frames += voice_microphone_frames(step)
            await self.inbox.wait_binary(microphone_frames)
            if params["listen_mode"] == "manual":
                await self.inbox.wait_count("listen/stop", exchange + 1)
            await self.pace.sleep(step["response_delay"])
            await self.send({"type": "stt", "text": self.spoken_text(step["speech_seconds"])})
            await self.send({"type": "llm", "emotion": self.rng.choice(EMOTIONS), "text": ":)"})
            if step["tool_call"]:
                volume = self.rng.randrange(10, 100, 10)
                await self.call_device("tools/call", {"name": "self.audio_speaker.set_volume",
                                                      "arguments": {"volume": volume}})
                self.stats.events["voice_tool_calls"] += 1
            await self.send({"type": "tts", "state": "start"})
            await self.speak(step["sentence_seconds"])
            await self.send({"type": "tts", "state": "stop"})
            self.stats.events["voice_exchanges"] += 1
        # The device listens on for a while, then closes; its last frames are counted before this returns.
        await self.inbox.wait_closed()

    async def speak(self, sentence_seconds: tuple[float, ...]) -> None:
        """Stream the answer's audio one frame every 60 ms, each sentence announced by sentence_start."""
        version = self.plan.params["protocol_version"]
        mean_bytes = self.plan.params["tts_frame_bytes"]
        sentence_starts = {}
        frames = 0
        for seconds in sentence_seconds:
            sentence_starts[frames] = seconds
            frames += voice_frames(seconds)
        loop = asyncio.get_running_loop()
        async for tick in self.pace.ticks(VOICE_FRAME_SECONDS, frames):
            if tick in sentence_starts:
                await self.send({"type": "tts", "state": "sentence_start",
                                 "text": self.spoken_text(sentence_starts[tick])})
            size = max(1, round(mean_bytes * self.rng.uniform(1 - AUDIO_SIZE_SPREAD, 1 + AUDIO_SIZE_SPREAD)))
            timestamp_ms = round((loop.time() - self.started) * 1000)
            await self.websocket.send(audio_frame(version, self.rng.randbytes(size), timestamp_ms))
            self.stats.events["voice_answer_frames"] += 1

    async def call_device(self, method: str, params: dict[str, Any]) -> None:
        """Send a JSON-RPC request to the device's MCP server and wait for its response."""
        self.requests += 1
        payload = {"jsonrpc": "2.0", "id": self.requests, "method": method, "params": params}
        await self.send({"type": "mcp", "payload": payload})
        await self.inbox.wait_count("mcp", self.requests)

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send(dumps({"session_id": self.session_id, **message}))

    def spoken_text(self, seconds: float) -> str:
        return filler(self.rng, round(seconds * SPOKEN_CHARACTERS_PER_SECOND))


# --- IoT device profiles -----------------------------------------------------


@websocket_route(IOT_TELEMETRY_PATH)
async def serve_iot_telemetry(websocket: ServerConnection, stats: ServerStats) -> None:
    """Take a hello and readings; after a reading, send a command with the device's command probability."""
    try:
        hello = json_object(await websocket.recv(), "hello")
        if hello.get("type") != "hello":
            raise RequestError(f"first message must have type 'hello', got {hello.get('type')!r}")
        device_id = str(hello.get("device_id", ""))
        command_probability = number(hello, "command_probability", 0.0, 1.0)
    except RequestError as exc:
        stats.events["iot_rejected"] += 1
        logger.warning("%s from %s: invalid hello: %s", IOT_TELEMETRY_PATH, peer(websocket), exc)
        # 1008: policy violation. A close reason must fit in 123 bytes.
        await websocket.close(1008, f"invalid hello: {exc}"[:120])
        return

    rng = random.Random(f"commands/{device_id}")
    commands_sent = 0
    async for message in websocket:
        try:
            frame = json_object(message, "device message")
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
                await websocket.send(dumps(command))
                stats.events["iot_commands"] += 1
        elif kind == "command_result":
            stats.events["iot_command_results"] += 1
        else:
            stats.events["iot_rejected"] += 1
            logger.warning("%s device %s: unknown message type %r", IOT_TELEMETRY_PATH, device_id, kind)
            await websocket.close(1008, f"unknown message type {kind!r}"[:120])
            return


async def _device_hello(websocket: ServerConnection) -> dict[str, Any]:
    hello = json_object(await websocket.recv(), "device hello")
    if hello.get("type") != "hello":
        raise RequestError(f"first message must have type 'hello', got {hello.get('type')!r}")
    return hello


def _device_message(message: str | bytes, expected: str) -> dict[str, Any]:
    if isinstance(message, bytes):
        raise RequestError(f"got a binary frame of {len(message)} bytes, expected a {expected!r} message")
    frame = json_object(message, f"{expected} message")
    if frame.get("type") != expected:
        raise RequestError(f"message type {frame.get('type')!r}, expected {expected!r}")
    return frame


@websocket_route(IOT_SENSOR_PATH)
async def serve_iot_sensor(websocket: ServerConnection, stats: ServerStats) -> None:
    """Acknowledge each reading of a waking battery sensor by its sequence number."""
    await _device_hello(websocket)
    async for message in websocket:
        reading = _device_message(message, "reading")
        await websocket.send(dumps({"type": "ack", "seq": reading.get("seq")}))
        stats.events["sensor_readings"] += 1


@websocket_route(IOT_METER_PATH)
async def serve_iot_meter(websocket: ServerConnection, stats: ServerStats) -> None:
    """Take a power meter's readings; the server sends nothing back."""
    await _device_hello(websocket)
    async for message in websocket:
        _device_message(message, "reading")
        stats.events["meter_readings"] += 1


@websocket_route(IOT_CAMERA_PATH)
async def serve_iot_camera(websocket: ServerConnection, stats: ServerStats) -> None:
    """Take a camera's status reports; acknowledge each binary snapshot with its size."""
    await _device_hello(websocket)
    async for message in websocket:
        if isinstance(message, bytes):
            await websocket.send(dumps({"type": "snapshot_ack", "bytes": len(message)}))
            stats.events["camera_snapshots"] += 1
            stats.events["camera_snapshot_bytes"] += len(message)
        else:
            _device_message(message, "status")
            stats.events["camera_statuses"] += 1


# --- people and pushes -------------------------------------------------------


@websocket_route(CHAT_PATH, scenario="chat_messaging")
async def serve_chat_messaging(websocket: ServerConnection, stats: ServerStats) -> None:
    """Play the other person of a chat: history first, then the planned messages of the other side.

    The server acknowledges each client message with "delivered" and each
    heartbeat with "pong" as they arrive.
    """
    session = session_of(websocket)
    plan, pace = session.plan, session.pace
    auth = json_object(await websocket.recv(), "auth message")
    if auth.get("type") != "auth":
        raise RequestError(f"first message must have type 'auth', got {auth.get('type')!r}")
    rng = random.Random(f"chat/{plan.reference}")

    async def answer(frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            await websocket.send(dumps({"type": "delivered", "id": frame.get("id")}))
        elif kind == "ping":
            await websocket.send(dumps({"type": "pong", "ts": frame.get("ts")}))

    def history(text: str) -> dict[str, Any]:
        return {"type": "history", "messages": [{"from": "peer", "text": text}]}

    await websocket.send(json_of_size(rng, history, plan.params["history_bytes"]))
    inbox = Inbox(websocket, f"{CHAT_PATH} session {plan.reference}", on_json=answer)

    async def script() -> None:
        from_client = 0
        for position, step in enumerate(plan.steps):
            if step["direction"] == "sent":
                from_client += 1
                await inbox.wait_count("message", from_client)
                continue
            await pace.sleep(step["gap"])
            await websocket.send(dumps({"type": "typing", "state": "start", "from": "peer"}))
            await pace.sleep(step["typing_seconds"])

            def message(text: str) -> dict[str, Any]:
                return {"type": "message", "id": f"peer-{position}", "from": "peer", "text": text}

            await websocket.send(json_of_size(rng, message, step["message_bytes"]))
            stats.events["chat_to_client"] += 1
        await inbox.wait_closed()

    await run_with_inbox(inbox, script())
    stats.events["chat_from_client"] += inbox.counts["message"]
    stats.events["chat_typing"] += inbox.counts["typing"]
    stats.events["chat_reads"] += inbox.counts["read"]
    stats.events["chat_heartbeats"] += inbox.counts["ping"]


@websocket_route(TICKER_PATH, scenario="ticker_push")
async def serve_ticker_push(websocket: ServerConnection, stats: ServerStats) -> None:
    """After a subscription, push the planned ticks: one update each, or a burst in bursty mode."""
    session = session_of(websocket)
    plan, pace = session.plan, session.pace
    request = json_object(await websocket.recv(), "subscription")
    channels = request.get("channels")
    if request.get("op") != "subscribe" or not isinstance(channels, list) or not channels:
        raise RequestError("first message must be {'op': 'subscribe', 'channels': [...]} with at least one channel")
    await websocket.send(dumps({"type": "subscribed", "channels": channels}))
    rng = random.Random(f"ticker/{plan.reference}")
    sequence = 0
    for step in plan.steps:
        await pace.sleep(plan.params["period"] * step["jitter"])
        for _ in range(ticker_updates(plan, step)):
            sequence += 1

            def update(text: str) -> dict[str, Any]:
                return {
                    "type": "update",
                    "seq": sequence,
                    "symbol": str(rng.choice(channels))[:16],
                    "price": round(rng.uniform(1.0, 500.0), 2),
                    "change": round(rng.uniform(-2.0, 2.0), 2),
                    "venue": text,
                }

            await websocket.send(json_of_size(rng, update, step["update_bytes"]))
            stats.events["ticker_updates"] += 1
    async for message in websocket:
        if json_object(message, "client message").get("op") == "unsubscribe":
            stats.events["ticker_unsubscribes"] += 1


@websocket_route(DASHBOARD_PATH, scenario="dashboard")
async def serve_dashboard(websocket: ServerConnection, stats: ServerStats) -> None:
    """After a subscription, send a snapshot of every panel, then the planned bursts of panel updates."""
    session = session_of(websocket)
    plan, pace = session.plan, session.pace
    request = json_object(await websocket.recv(), "subscription")
    panels = request.get("panels")
    if request.get("type") != "subscribe" or not isinstance(panels, list) or not panels:
        raise RequestError("first message must be {'type': 'subscribe', 'panels': [...]} with at least one panel")
    rng = random.Random(f"dashboard/{plan.reference}")

    def snapshot(text: str) -> dict[str, Any]:
        return {"type": "snapshot", "panels": [str(panel)[:32] for panel in panels], "state": text}

    await websocket.send(json_of_size(rng, snapshot, plan.params["snapshot_bytes"]))
    stats.events["dashboard_snapshots"] += 1
    for step in plan.steps:
        await pace.sleep(step["idle"])
        for update_number in range(step["burst_updates"]):
            if update_number:
                await pace.sleep(step["update_gap"])

            def update(text: str) -> dict[str, Any]:
                return {"type": "update", "panel": str(rng.choice(panels))[:32],
                        "value": round(rng.uniform(0.0, 100.0), 3), "series": text}

            await websocket.send(json_of_size(rng, update, step["update_bytes"]))
            stats.events["dashboard_updates"] += 1
    async for _ in websocket:
        pass
