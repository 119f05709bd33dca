"""Scenarios of the traffic generator: their classes, families and parameter table.

A scenario is one kind of user session (an LLM chat, an IoT device reporting,
an MCP agent calling tools, ...). Its parameters are drawn from the
distributions in `BUILTIN_SCENARIOS`, the one table that sets how long, how
big and how fast each session is. Session k of a run with seed s draws from
`random.Random` seeded by (s, k) alone, so a plan never depends on timing, on
which sessions ran before it or on which worker process runs it.

Units: "s" parameters are seconds of real time. The client divides them by
`--time-scale` before it sleeps or sends a wait time to the server, and
multiplies rates ("tokens/s", "bytes/s") by it, so a scaled run keeps the
same plans.

    plan = plan_session(seed=7, index=0)
    plan.scenario, plan.family, plan.label   # ('llm_chat', 'ws', 1)
    plan.steps[0]["answer_tokens"]

`parameter_table_markdown()` renders the table for a data card.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.traffic.distributions import Choice, Distribution, IntRange, LogNormal, Uniform, bounds, draws_integers
from tools.traffic.protocol import MCP_HANDSHAKE_REVISION, MCP_STATELESS_REVISION, MCP_TOOLS

__all__ = [
    "AI", "NOT_AI", "FAMILIES", "SCENARIOS", "DEFAULT_MIX", "DEFAULT_MIX_WEIGHTS",
    "Choice", "IntRange", "LogNormal", "Uniform",
    "Family", "Param", "Scenario", "SessionPlan", "MixEntry",
    "register_scenario", "check_mix", "weighted_mix", "plan_session", "draw_plan", "plan_from_reference",
    "parameter_table_markdown",
]

AI = 1
NOT_AI = 0


@dataclass(frozen=True)
class Family:
    """Protocol setting a flow belongs to; the detector is trained per family."""

    name: str
    encrypted: bool


# Family "mcp" is the HTTPS setting: MCP sessions and ordinary HTTPS are its two classes.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (Family("ws", encrypted=False), Family("wss", encrypted=True), Family("mcp", encrypted=True))
}


@dataclass(frozen=True)
class Param:
    """One row of the parameter table: distribution, unit and why the values are realistic.

    `per` is "session" for a value drawn once a session, or "step" for a value
    drawn again for every step (turn, reading, call, page, post). `count`
    names an integer step parameter: the row is then drawn that many times
    and its value is a tuple.
    """

    distribution: Distribution
    unit: str
    rationale: str
    per: str = "session"
    count: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A kind of session: its class, the families it runs over and its parameter table.

    `steps` names the per-session integer parameter that gives the number of
    steps. `max_seconds` bounds one session in real time. It is set above the
    longest session the clipped distributions allow (largest counts, waits
    and delays added up), so only a stalled session reaches it.
    """

    name: str
    label: int
    families: tuple[str, ...]
    steps: str
    max_seconds: float
    params: Mapping[str, Param]
    description: str = ""


_WEBSOCKET = ("ws", "wss")
_HTTPS = ("mcp",)

# A rationale marks with "estimate" a value that is a judgement rather than a
# measurement or a documented default.
BUILTIN_SCENARIOS: tuple[Scenario, ...] = (
    # --- AI over WebSocket -------------------------------------------------
    Scenario(
        name="llm_chat",
        label=AI,
        families=_WEBSOCKET,
        steps="turns",
        max_seconds=720.0,
        description="chat client streaming LLM answers token by token over one WebSocket",
        params={
            "turns": Param(
                IntRange(2, 6), "turns", "several prompt-answer exchanges before the user leaves (estimate)"
            ),
            "think_time": Param(
                LogNormal(8.0, 0.6, 2.0, 45.0), "s",
                "typing a prompt or reading the last answer; the socket stays open meanwhile (estimate)",
                per="step",
            ),
            "prompt_bytes": Param(
                LogNormal(350, 0.5, 150, 1500, integer=True), "bytes",
                "a JSON text frame with the prompt and request options: a few hundred bytes",
                per="step",
            ),
            "answer_tokens": Param(
                LogNormal(220, 0.7, 20, 1000, integer=True), "tokens",
                "chat answers run from one sentence to a page; about 4 characters a token",
                per="step",
            ),
            "first_token_delay": Param(
                LogNormal(0.7, 0.5, 0.2, 3.0), "s",
                "queueing and prompt processing before the first token: sub-second to a few seconds (estimate)",
                per="step",
            ),
            "token_rate": Param(
                Uniform(20.0, 80.0), "tokens/s",
                "hosted models stream tens of tokens a second to one user (estimate)",
                per="step",
            ),
        },
    ),
    Scenario(
        name="llm_batched",
        label=AI,
        families=_WEBSOCKET,
        steps="turns",
        max_seconds=720.0,
        description="LLM API client over one WebSocket whose answers arrive a few tokens a frame",
        params={
            "turns": Param(IntRange(1, 6), "turns", "a question and a few follow-ups (estimate)"),
            "tokens_per_frame": Param(
                IntRange(3, 12), "tokens",
                "APIs that batch their deltas flush every few tokens, every 50 to 200 ms at these rates (estimate)",
            ),
            "think_time": Param(
                LogNormal(10.0, 0.6, 2.0, 60.0), "s",
                "reading the answer and writing the next prompt; the socket stays open meanwhile (estimate)",
                per="step",
            ),
            "prompt_bytes": Param(
                LogNormal(500, 0.6, 150, 4000, integer=True), "bytes",
                "a JSON request with the prompt and sampling options; pasted text makes some long (estimate)",
                per="step",
            ),
            "answer_tokens": Param(
                LogNormal(250, 0.8, 20, 1500, integer=True), "tokens",
                "from one sentence to a long explanation or a code listing",
                per="step",
            ),
            "first_token_delay": Param(
                LogNormal(0.8, 0.5, 0.2, 4.0), "s",
                "queueing and prompt processing before the first frame (estimate)",
                per="step",
            ),
            "token_rate": Param(
                Uniform(30.0, 120.0), "tokens/s",
                "hosted APIs generate tens to about a hundred tokens a second for one request (estimate)",
                per="step",
            ),
        },
    ),
    Scenario(
        name="voice_assistant",
        label=AI,
        families=_WEBSOCKET,
        steps="exchanges",
        max_seconds=360.0,
        description="voice assistant in the xiaozhi-esp32 style: JSON events and Opus frames both ways, "
        "one WebSocket a conversation",
        params={
            "exchanges": Param(
                IntRange(1, 5), "exchanges",
                "a wake-word conversation: a question and up to a few follow-ups before the device "
                "closes the channel (estimate)",
            ),
            "protocol_version": Param(
                Choice((1, 2, 3), (0.6, 0.2, 0.2)), "version",
                "binary framing of xiaozhi-esp32: version 1 sends bare Opus, 2 and 3 add a 16- or 4-byte "
                "header; 1 is the default (weights estimate)",
            ),
            "listen_mode": Param(
                Choice(("auto", "manual"), (0.7, 0.3)), "mode",
                "auto: the server's voice activity detection ends an utterance; manual: the device sends "
                "listen stop when the button is released (weights estimate)",
            ),
            "speech_frame_bytes": Param(
                Uniform(100.0, 160.0), "bytes",
                "libopus's automatic bitrate for 16 kHz mono in 60 ms frames is 17 kbit/s, about 128 bytes "
                "a frame; VBR moves it up and down",
            ),
            "silence_frame_bytes": Param(
                Uniform(8.0, 30.0), "bytes",
                "VBR Opus spends few bits on background noise between words (estimate)",
            ),
            "tts_frame_bytes": Param(
                Uniform(150.0, 230.0), "bytes",
                "the server's 24 kHz mono speech at libopus's automatic bitrate (25 kbit/s) is about "
                "188 bytes a 60 ms frame",
            ),
            "linger_seconds": Param(
                LogNormal(4.0, 0.5, 1.0, 15.0), "s",
                "the device keeps listening after the last answer, then closes the channel (estimate)",
            ),
            "pause_seconds": Param(
                LogNormal(1.0, 0.6, 0.2, 6.0), "s",
                "silence the microphone streams before the user starts speaking (estimate)",
                per="step",
            ),
            "speech_seconds": Param(
                LogNormal(2.5, 0.5, 0.6, 10.0), "s",
                "a spoken question or command lasts a few seconds (estimate)",
                per="step",
            ),
            "response_delay": Param(
                LogNormal(1.2, 0.5, 0.3, 5.0), "s",
                "speech recognition, the LLM's first sentence and the first synthesized audio (estimate)",
                per="step",
            ),
            "sentences": Param(
                IntRange(1, 4), "sentences", "spoken answers are kept short: one to a few sentences",
                per="step",
            ),
            "sentence_seconds": Param(
                LogNormal(3.0, 0.5, 0.8, 10.0), "s",
                "a sentence of 5 to 25 words spoken at about 2.5 words a second (estimate)",
                per="step", count="sentences",
            ),
            "tool_call": Param(
                Choice((False, True), (0.8, 0.2)), "flag",
                "the server calls a device tool (volume, light) over MCP inside the socket in some "
                "exchanges (estimate)",
                per="step",
            ),
        },
    ),
    # --- not AI over WebSocket ---------------------------------------------
    Scenario(
        name="iot_telemetry",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="readings",
        max_seconds=300.0,
        description="device pushing sensor readings over a WebSocket; the server now and then sends a command",
        params={
            "readings": Param(IntRange(5, 20), "readings", "with the period below, a session lasts tens of seconds"),
            "period": Param(
                Uniform(2.0, 8.0), "s", "dashboards of live sensors refresh every few seconds (estimate)"
            ),
            "command_probability": Param(
                Uniform(0.03, 0.15), "probability",
                "chance the server answers a reading with a command: a few commands a session at most",
            ),
            "jitter": Param(
                Uniform(0.9, 1.1), "factor",
                "device timers drift and wake late, so the gap before each reading is period times this",
                per="step",
            ),
            "reading_bytes": Param(
                LogNormal(120, 0.3, 60, 300, integer=True), "bytes",
                "a JSON reading of a few sensor values with a timestamp",
                per="step",
            ),
        },
    ),
    Scenario(
        name="iot_sensor",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="readings",
        max_seconds=30.0,
        description="battery sensor that wakes, sends its buffered readings, gets them acknowledged and sleeps",
        params={
            "readings": Param(
                IntRange(1, 4), "readings",
                "readings measured since the last wake-up; the sensor sleeps minutes between wakes (estimate)",
            ),
            "gap": Param(
                LogNormal(0.4, 0.6, 0.05, 3.0), "s",
                "buffered readings go out nearly back to back once the device is connected (estimate)",
                per="step",
            ),
            "reading_bytes": Param(
                LogNormal(90, 0.3, 40, 250, integer=True), "bytes",
                "a compact JSON reading: temperature, humidity, pressure, battery",
                per="step",
            ),
        },
    ),
    Scenario(
        name="iot_meter",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="readings",
        max_seconds=300.0,
        description="mains-powered power meter streaming a reading every second or two",
        params={
            "readings": Param(
                IntRange(20, 120), "readings",
                "the meter streams while a viewer watches live power; the session ends when the viewer "
                "leaves or the link drops (estimate)",
            ),
            "period": Param(
                Uniform(0.5, 2.0), "s", "energy monitors and smart plugs push live power every second or two (estimate)"
            ),
            "jitter": Param(Uniform(0.95, 1.05), "factor", "timer drift: the gap before a reading is period times this",
                            per="step"),
            "reading_bytes": Param(
                LogNormal(160, 0.2, 100, 300, integer=True), "bytes",
                "JSON with power, voltage, current, frequency and energy counters",
                per="step",
            ),
        },
    ),
    Scenario(
        name="iot_camera",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="statuses",
        max_seconds=300.0,
        description="camera sending small status reports and, on motion, a JPEG snapshot the server acknowledges",
        params={
            "statuses": Param(IntRange(5, 20), "reports", "status reports during one monitoring session (estimate)"),
            "period": Param(Uniform(3.0, 10.0), "s", "cameras report status every few seconds (estimate)"),
            "jitter": Param(Uniform(0.9, 1.1), "factor", "timer drift: the gap before a report is period times this",
                            per="step"),
            "status_bytes": Param(
                LogNormal(220, 0.3, 100, 600, integer=True), "bytes",
                "JSON status: uptime, storage, signal strength, motion flags",
                per="step",
            ),
            "snapshot": Param(
                Choice((False, True), (0.85, 0.15)), "flag",
                "motion triggers a snapshot after some reports (estimate)",
                per="step",
            ),
            "snapshot_bytes": Param(
                LogNormal(60000, 0.6, 15000, 300000, integer=True), "bytes",
                "a JPEG still of a camera stream: tens to hundreds of KB",
                per="step",
            ),
        },
    ),
    Scenario(
        name="chat_messaging",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="messages",
        max_seconds=840.0,
        description="human chat: short messages both ways at human pace, typing indicators, receipts, heartbeats",
        params={
            "messages": Param(
                IntRange(3, 20), "messages", "a short conversation while the chat window is open (estimate)"
            ),
            "history_bytes": Param(
                LogNormal(2000, 0.8, 200, 20000, integer=True), "bytes",
                "recent messages the server sends when the chat opens (estimate)",
            ),
            "heartbeat_period": Param(
                Uniform(20.0, 30.0), "s",
                "chat apps ping every 20 to 30 s to keep presence and NAT state alive (estimate)",
            ),
            "direction": Param(
                Choice(("sent", "received")), "side", "either side may write next", per="step",
            ),
            "gap": Param(
                LogNormal(4.0, 0.8, 0.5, 30.0), "s",
                "reading and thinking before the next message is started (estimate)",
                per="step",
            ),
            "typing_seconds": Param(
                LogNormal(2.5, 0.6, 0.5, 10.0), "s",
                "the typing indicator goes out this long before the message (estimate)",
                per="step",
            ),
            "message_bytes": Param(
                LogNormal(80, 0.8, 5, 1500, integer=True), "bytes",
                "message text from a few words to a paragraph, inside a JSON envelope",
                per="step",
            ),
        },
    ),
    Scenario(
        name="ticker_push",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="ticks",
        max_seconds=360.0,
        description="server-push ticker (prices, scores): small update frames at a steady or bursty rate",
        params={
            "ticks": Param(IntRange(10, 80), "ticks", "pushes while a quote or score page is open (estimate)"),
            "mode": Param(
                Choice(("steady", "bursty")), "mode",
                "price feeds tick steadily; score and news feeds push bursts when something happens (estimate)",
            ),
            "symbols": Param(IntRange(1, 20), "symbols", "instruments or matches the page subscribes to"),
            "period": Param(Uniform(0.5, 3.0), "s", "a tick every half second to a few seconds (estimate)"),
            "jitter": Param(
                Uniform(0.7, 1.3), "factor", "market and match activity is irregular: the gap is period times this",
                per="step",
            ),
            "burst_updates": Param(
                IntRange(2, 10), "updates",
                "bursty mode only: updates pushed back to back in one tick (estimate)",
                per="step",
            ),
            "update_bytes": Param(
                LogNormal(90, 0.4, 40, 400, integer=True), "bytes",
                "a JSON quote or score: symbol, value, change, timestamp",
                per="step",
            ),
        },
    ),
    Scenario(
        name="dashboard",
        label=NOT_AI,
        families=_WEBSOCKET,
        steps="bursts",
        max_seconds=780.0,
        description="monitoring dashboard: an initial snapshot, then bursts of panel updates with idle time between",
        params={
            "bursts": Param(IntRange(2, 10), "bursts", "changes while the dashboard is open (estimate)"),
            "snapshot_bytes": Param(
                LogNormal(8000, 0.8, 1000, 60000, integer=True), "bytes",
                "the state of every panel, sent once after the subscription",
            ),
            "idle": Param(
                LogNormal(12.0, 0.8, 1.0, 60.0), "s",
                "quiet time before a change; only keep-alive pings cross meanwhile (estimate)",
                per="step",
            ),
            "burst_updates": Param(
                IntRange(2, 25), "updates", "panels refreshed after one change (estimate)", per="step",
            ),
            "update_gap": Param(
                LogNormal(0.05, 0.6, 0.005, 0.5), "s",
                "updates of one burst follow each other within tens of ms (estimate)",
                per="step",
            ),
            "update_bytes": Param(
                LogNormal(400, 0.7, 80, 5000, integer=True), "bytes",
                "a series point, a status change or a small table",
                per="step",
            ),
        },
    ),
    # --- AI over HTTPS -----------------------------------------------------
    Scenario(
        name="mcp_tools",
        label=AI,
        families=_HTTPS,
        steps="calls",
        max_seconds=1800.0,
        description="MCP client (official SDK) calling tools over Streamable HTTP with TLS",
        params={
            "calls": Param(
                LogNormal(4.0, 0.8, 1, 30, integer=True), "calls",
                "most agent tasks take a handful of tool calls, coding and research agents dozens (estimate)",
            ),
            "protocol": Param(
                Choice((MCP_HANDSHAKE_REVISION, MCP_STATELESS_REVISION)), "revision",
                "the SDK speaks both: the 2025-11-25 handshake (initialize, session id, GET stream) and the "
                "stateless 2026-07-28 revision (server/discover); clients of both kinds are in use",
            ),
            "think_time": Param(
                LogNormal(5.0, 0.6, 1.0, 30.0), "s",
                "the model deciding on the next call between results: seconds of LLM inference (estimate)",
                per="step",
            ),
            "tool": Param(
                Choice(tuple(MCP_TOOLS)), "name",
                "three tools with different argument and result shapes",
                per="step",
            ),
            "argument_bytes": Param(
                LogNormal(150, 0.5, 40, 800, integer=True), "bytes",
                "tool arguments are a query, a path or a short SQL statement",
                per="step",
            ),
            "progress_steps": Param(
                IntRange(2, 10), "notifications",
                "progress notifications streamed over SSE before the result",
                per="step",
            ),
            "step_seconds": Param(
                LogNormal(0.4, 0.6, 0.05, 3.0), "s",
                "work between progress notifications: a search shard, a query batch (estimate)",
                per="step",
            ),
            "result_bytes": Param(
                LogNormal(3000, 0.8, 200, 30000, integer=True), "bytes",
                "tool results are snippets, rows or summaries: hundreds of bytes to tens of KB",
                per="step",
            ),
        },
    ),
    Scenario(
        name="llm_chunked",
        label=AI,
        families=_HTTPS,
        steps="turns",
        max_seconds=720.0,
        description="OpenAI-style streaming endpoint: one POST a turn, the answer as server-sent events "
        "in an HTTP/1.1 chunked response",
        params={
            "turns": Param(
                IntRange(1, 5), "turns", "a question and a few follow-ups; each turn is one POST (estimate)"
            ),
            "tokens_per_chunk": Param(
                Choice((1, 2, 4), (0.6, 0.25, 0.15)), "tokens",
                "OpenAI-style endpoints send one token an event; some gateways batch a few (weights estimate)",
            ),
            "think_time": Param(
                LogNormal(10.0, 0.6, 2.0, 60.0), "s",
                "reading the answer and writing the next prompt; not used before the first turn (estimate)",
                per="step",
            ),
            "prompt_bytes": Param(
                LogNormal(300, 0.7, 50, 4000, integer=True), "bytes",
                "the new user message; the request also resends the conversation so far, as these APIs need",
                per="step",
            ),
            "answer_tokens": Param(
                LogNormal(300, 0.8, 20, 2000, integer=True), "tokens",
                "from one sentence to a long explanation or a code listing",
                per="step",
            ),
            "first_token_delay": Param(
                LogNormal(0.8, 0.6, 0.2, 5.0), "s",
                "queueing and prompt processing before the first event (estimate)",
                per="step",
            ),
            "token_rate": Param(
                Uniform(30.0, 120.0), "tokens/s",
                "hosted APIs generate tens to about a hundred tokens a second for one request (estimate)",
                per="step",
            ),
        },
    ),
    # --- not AI over HTTPS -------------------------------------------------
    Scenario(
        name="https_web",
        label=NOT_AI,
        families=_HTTPS,
        steps="pages",
        max_seconds=480.0,
        description="browser-like page visits: HTML, then its assets over a keep-alive connection",
        params={
            "pages": Param(IntRange(1, 4), "pages", "a short visit to a site"),
            "read_time": Param(
                LogNormal(15.0, 0.7, 3.0, 90.0), "s",
                "reading a page before following a link; not used before the first page (estimate)",
                per="step",
            ),
            "html_bytes": Param(
                LogNormal(30000, 0.6, 4000, 150000, integer=True), "bytes",
                "HTML documents are tens of KB",
                per="step",
            ),
            "assets": Param(IntRange(3, 10), "assets", "stylesheets, scripts and images fetched after the HTML",
                            per="step"),
            "asset_bytes": Param(
                LogNormal(15000, 1.0, 500, 200000, integer=True), "bytes",
                "from small icons to large scripts and images",
                per="step", count="assets",
            ),
        },
    ),
    Scenario(
        name="https_rest",
        label=NOT_AI,
        families=_HTTPS,
        steps="posts",
        max_seconds=600.0,
        description="device posting telemetry to a REST endpoint at a fixed period",
        params={
            "posts": Param(IntRange(4, 15), "posts", "one reporting session of a device"),
            "period": Param(
                LogNormal(8.0, 0.5, 2.0, 30.0), "s",
                "REST reporters post every few seconds to tens of seconds (estimate)",
            ),
            "jitter": Param(Uniform(0.9, 1.1), "factor", "timer drift: the gap before a post is period times this",
                            per="step"),
            "body_bytes": Param(
                LogNormal(400, 0.5, 100, 3000, integer=True), "bytes",
                "a JSON body with a batch of readings and device metadata",
                per="step",
            ),
        },
    ),
    Scenario(
        name="rest_polling",
        label=NOT_AI,
        families=_HTTPS,
        steps="polls",
        max_seconds=480.0,
        description="app polling a REST resource with GET at a period; an unchanged resource returns 304",
        params={
            "polls": Param(IntRange(4, 20), "polls", "polls while an app or a status page is open (estimate)"),
            "period": Param(
                LogNormal(5.0, 0.6, 1.0, 20.0), "s",
                "polling intervals of a second to 20 s (estimate)",
            ),
            "jitter": Param(Uniform(0.95, 1.05), "factor", "timer drift: the gap before a poll is period times this",
                            per="step"),
            "changed": Param(
                Choice((True, False), (0.3, 0.7)), "flag",
                "most polls find nothing new and get 304 Not Modified without a body (estimate)",
                per="step",
            ),
            "response_bytes": Param(
                LogNormal(1500, 0.9, 100, 50000, integer=True), "bytes",
                "the JSON resource when it changed: a status or a list of items",
                per="step",
            ),
        },
    ),
    Scenario(
        name="file_download",
        label=NOT_AI,
        families=_HTTPS,
        steps="files",
        max_seconds=300.0,
        description="file downloads of a few MB, delivered at the rate of an access link",
        params={
            "files": Param(IntRange(1, 3), "files", "a user or an updater fetches one to a few files (estimate)"),
            "bandwidth": Param(
                LogNormal(4.0e6, 0.8, 5.0e5, 2.5e7), "bytes/s",
                "access links deliver 4 to 200 Mbit/s to one download, median 32 Mbit/s (estimate)",
            ),
            "gap": Param(
                LogNormal(3.0, 0.8, 0.5, 30.0), "s",
                "choosing the next file; not used before the first (estimate)",
                per="step",
            ),
            "file_bytes": Param(
                LogNormal(1.5e6, 0.9, 2.0e5, 2.0e7, integer=True), "bytes",
                "documents, installers and media of a few MB (estimate; kept small so a capture stays "
                "under a few GB)",
                per="step",
            ),
        },
    ),
    Scenario(
        name="sse_notifications",
        label=NOT_AI,
        families=_HTTPS,
        steps="notifications",
        max_seconds=660.0,
        description="long-lived text/event-stream of small notifications, MCP's SSE without the AI",
        params={
            "notifications": Param(
                IntRange(2, 15), "notifications", "events while a web app tab is open (estimate)"
            ),
            "keepalive_period": Param(
                Uniform(10.0, 30.0), "s",
                "servers send an SSE comment line every 10 to 30 s so proxies keep the stream open (estimate)",
            ),
            "linger_seconds": Param(
                LogNormal(3.0, 0.5, 0.5, 15.0), "s",
                "the tab stays open after the last notification before it is closed (estimate)",
            ),
            "gap": Param(
                LogNormal(6.0, 0.9, 0.3, 40.0), "s",
                "time between notifications: irregular, from a burst to half a minute (estimate)",
                per="step",
            ),
            "notification_bytes": Param(
                LogNormal(250, 0.6, 60, 2000, integer=True), "bytes",
                "a JSON notification: id, kind, title and a short text",
                per="step",
            ),
        },
    ),
    Scenario(
        name="update_check",
        label=NOT_AI,
        families=_HTTPS,
        steps="checks",
        max_seconds=240.0,
        description="application checking for updates: a short GET, a small response or now and then a manifest",
        params={
            "checks": Param(
                IntRange(1, 3), "checks",
                "a check at start and again later; real checks are hours apart, here the gap is shortened, "
                "which no flow feature sees because each check is its own connection",
            ),
            "gap": Param(
                LogNormal(15.0, 0.5, 6.0, 60.0), "s",
                "longer than the 5 s keep-alive, so every check opens a new connection; not used before the first",
                per="step",
            ),
            "update_available": Param(
                Choice((False, True), (0.9, 0.1)), "flag", "most checks find no update (estimate)", per="step",
            ),
            "manifest_bytes": Param(
                LogNormal(3000, 0.6, 500, 20000, integer=True), "bytes",
                "an update manifest with URLs, hashes and release notes, sent only when an update is available",
                per="step",
            ),
        },
    ),
)

SCENARIOS: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario) -> Scenario:
    """Add `scenario` to `SCENARIOS` after checking its table is consistent.

    Raises:
        ValueError: on a duplicate name, an unknown family, a label other than
            0 or 1, or a `steps`/`count`/`per` entry that does not fit the table.
    """
    where = f"scenario {scenario.name!r}"
    if scenario.name in SCENARIOS:
        raise ValueError(f"{where} is already registered; pick another name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", scenario.name):
        raise ValueError(f"{where}: a name is lower-case letters, digits and underscores, starting with a letter")
    if scenario.label not in (AI, NOT_AI):
        raise ValueError(f"{where} has label {scenario.label!r}; use 1 (AI) or 0 (not AI)")
    unknown = [family for family in scenario.families if family not in FAMILIES]
    if not scenario.families or unknown:
        raise ValueError(f"{where} has families {scenario.families!r}; each must be one of {sorted(FAMILIES)}")
    if scenario.max_seconds <= 0:
        raise ValueError(f"{where} has max_seconds {scenario.max_seconds!r}; it must be greater than 0")
    steps = scenario.params.get(scenario.steps)
    if steps is None or steps.per != "session" or not draws_integers(steps.distribution):
        raise ValueError(f"{where}: steps={scenario.steps!r} must name a per-session integer parameter")
    if bounds(steps.distribution)[0] < 1:
        raise ValueError(f"{where}: parameter {scenario.steps!r} must draw at least 1 step")
    names = list(scenario.params)
    for name, param in scenario.params.items():
        if param.per not in ("session", "step"):
            raise ValueError(f"{where}: parameter {name!r} has per={param.per!r}; use 'session' or 'step'")
        if param.count is not None:
            counter = scenario.params.get(param.count)
            if counter is None or counter.per != "step" or not draws_integers(counter.distribution):
                raise ValueError(
                    f"{where}: parameter {name!r} has count={param.count!r}, "
                    "which must name a per-step integer parameter defined before it"
                )
            if names.index(param.count) > names.index(name):
                raise ValueError(f"{where}: parameter {param.count!r} must come before {name!r}, which counts on it")
    SCENARIOS[scenario.name] = scenario
    return scenario


for _scenario in BUILTIN_SCENARIOS:
    register_scenario(_scenario)

MixEntry = tuple[str, str]


def weighted_mix(weights: Iterable[tuple[MixEntry, int]]) -> tuple[MixEntry, ...]:
    """Interleave weighted (scenario, family) entries round by round.

    Round r contains every entry whose weight is above r, in the given order,
    so any stretch of consecutive sessions stays close to the proportions.

    Raises:
        ValueError: naming an entry whose weight is not an integer >= 1.
    """
    weights = list(weights)
    for entry, weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"mix entry {entry!r} has weight {weight!r}; use an integer >= 1")
    mix: list[MixEntry] = []
    for round_index in range(max((weight for _, weight in weights), default=0)):
        mix.extend(entry for entry, weight in weights if weight > round_index)
    return tuple(mix)


# Weights of the default mix, in sessions. A WebSocket session is one
# connection, so in families ws and wss sessions are flows: AI and not AI get
# 24 sessions a round each. An HTTPS session opens several connections, on
# average (measured over loopback at time scale 1, 560 sessions at once for
# 600 s): mcp_tools 8.2, https_rest 7.1, rest_polling 6.9, llm_chunked 2.9,
# https_web 2.6, update_check 2.2, file_download 1.3, sse_notifications 1.
# Family mcp is therefore balanced in flows instead: AI about 2 x 8.2 +
# 2 x 2.9 = 22 a round, not AI about 21. A round then gives each family a
# similar number of flows (that run: ws 2526, wss 2517, mcp 2285).
DEFAULT_MIX_WEIGHTS: tuple[tuple[MixEntry, int], ...] = tuple(
    ((scenario, family), weight)
    for family in ("ws", "wss")
    for scenario, weight in (
        ("llm_chat", 8), ("llm_batched", 8), ("voice_assistant", 8),
        ("iot_telemetry", 3), ("iot_sensor", 4), ("iot_meter", 3), ("iot_camera", 3),
        ("chat_messaging", 4), ("ticker_push", 4), ("dashboard", 3),
    )
) + (
    (("mcp_tools", "mcp"), 2), (("llm_chunked", "mcp"), 2),
    (("https_web", "mcp"), 1), (("https_rest", "mcp"), 1), (("rest_polling", "mcp"), 1),
    (("file_download", "mcp"), 1), (("sse_notifications", "mcp"), 1), (("update_check", "mcp"), 1),
)

# Session k runs DEFAULT_MIX[k % len(DEFAULT_MIX)].
DEFAULT_MIX: tuple[MixEntry, ...] = weighted_mix(DEFAULT_MIX_WEIGHTS)


@dataclass(frozen=True)
class SessionPlan:
    """Everything one session will do, drawn before it starts.

    `params` contains the per-session values and `steps` one mapping of
    per-step values for each step, in order.
    """

    seed: int
    index: int
    scenario: str
    family: str
    label: int
    encrypted: bool
    params: Mapping[str, Any]
    steps: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def reference(self) -> str:
        """The plan's name for the server: "seed/index/scenario/family"; see `plan_from_reference`."""
        return f"{self.seed}/{self.index}/{self.scenario}/{self.family}"


def check_mix(mix: Sequence[MixEntry]) -> None:
    """Check that every (scenario, family) entry of `mix` is registered and allowed.

    Raises:
        ValueError: naming the first entry that is not.
    """
    if not mix:
        raise ValueError("the scenario mix is empty; pass at least one (scenario, family) entry")
    for scenario_name, family in mix:
        scenario = SCENARIOS.get(scenario_name)
        if scenario is None:
            raise ValueError(
                f"mix entry ({scenario_name!r}, {family!r}): unknown scenario; "
                f"registered scenarios are {sorted(SCENARIOS)}"
            )
        if family not in scenario.families:
            raise ValueError(
                f"mix entry ({scenario_name!r}, {family!r}): scenario {scenario_name!r} "
                f"runs over {scenario.families!r} only"
            )


def plan_session(seed: int, index: int, mix: Sequence[MixEntry] = DEFAULT_MIX) -> SessionPlan:
    """Draw the plan of session `index` of a run with `seed`: the entry `mix[index % len(mix)]`."""
    check_mix(mix)
    scenario_name, family = mix[index % len(mix)]
    return draw_plan(seed, index, scenario_name, family)


def draw_plan(seed: int, index: int, scenario_name: str, family: str) -> SessionPlan:
    """Draw the plan of session `index` of a run with `seed` for a given scenario and family.

    The result depends only on these four values: the generator is seeded
    with a string, which `random.Random` hashes with SHA-512, so plans are the
    same on every run and every Python version since 3.2. The traffic server
    draws the same plan from a session's `SessionPlan.reference`.
    """
    check_mix([(scenario_name, family)])
    scenario = SCENARIOS[scenario_name]
    rng = random.Random(f"aiflowd-traffic/{seed}/{index}")

    params = {name: param.distribution.draw(rng) for name, param in scenario.params.items() if param.per == "session"}
    steps = []
    for _ in range(params[scenario.steps]):
        step: dict[str, Any] = {}
        for name, param in scenario.params.items():
            if param.per != "step":
                continue
            if param.count is None:
                step[name] = param.distribution.draw(rng)
            else:
                step[name] = tuple(param.distribution.draw(rng) for _ in range(step[param.count]))
        steps.append(step)

    return SessionPlan(
        seed=seed,
        index=index,
        scenario=scenario_name,
        family=family,
        label=scenario.label,
        encrypted=FAMILIES[family].encrypted,
        params=params,
        steps=tuple(steps),
    )


# Seeds and session indices of a plan reference: decimal, at most 18 digits,
# so a hostile reference cannot make the server parse a huge integer.
_REFERENCE = re.compile(r"(-?\d{1,18})/(\d{1,18})/([a-z][a-z0-9_]*)/([a-z]+)")


def plan_from_reference(reference: str, scenarios: Iterable[str] | None = None) -> SessionPlan:
    """Draw the plan named by a `SessionPlan.reference` such as "7/12/ticker_push/wss".

    `scenarios`, if given, are the scenario names the caller serves.

    Raises:
        ValueError: naming the reference and what is wrong with it.
    """
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise ValueError(f"plan reference {reference[:80]!r} is not seed/index/scenario/family")
    seed, index, scenario_name, family = int(match[1]), int(match[2]), match[3], match[4]
    if scenarios is not None and scenario_name not in scenarios:
        raise ValueError(f"plan reference {reference!r}: scenario {scenario_name!r} is not served here")
    try:
        return draw_plan(seed, index, scenario_name, family)
    except ValueError as exc:
        raise ValueError(f"plan reference {reference!r}: {exc}") from None


def parameter_table_markdown(scenarios: Iterable[Scenario] | None = None) -> str:
    """Render the scenarios and their parameter table as Markdown, for a data card.

    Two tables: one row a scenario (label, families, description), then one
    row a parameter (scenario, parameter, distribution, unit, drawn per,
    reason). `scenarios` defaults to every registered scenario.
    """
    scenarios = list(SCENARIOS.values() if scenarios is None else scenarios)
    lines = [
        "| scenario | label | families | steps | what a session does |",
        "|---|---:|---|---|---|",
    ]
    for scenario in scenarios:
        label = "1 (AI)" if scenario.label == AI else "0 (not AI)"
        lines.append(
            f"| `{scenario.name}` | {label} | {', '.join(scenario.families)} | `{scenario.steps}` "
            f"| {_cell(scenario.description)} |"
        )
    lines += [
        "",
        "| scenario | parameter | distribution | unit | drawn per | reason |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        for name, param in scenario.params.items():
            per = param.per if param.count is None else f"{param.per}, `{param.count}` times"
            lines.append(
                f"| `{scenario.name}` | `{name}` | {_cell(param.distribution.describe())} | {_cell(param.unit)} "
                f"| {per} | {_cell(param.rationale)} |"
            )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
