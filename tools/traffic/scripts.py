"""Rules both sides of a scripted session share: counts derived from plans, and audio framing.

The client runner, the server handler and the tests must agree exactly on
how many frames or messages a plan implies and on how audio frames are
wrapped, so each such rule is written once, here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from tools.traffic.protocol import VOICE_FRAME_SECONDS
from tools.traffic.scenarios import SessionPlan


def voice_frames(seconds: float) -> int:
    """Return the number of 60 ms Opus frames that cover `seconds` of audio, at least 1."""
    return max(1, round(seconds / VOICE_FRAME_SECONDS))


def voice_microphone_frames(step: Mapping[str, Any]) -> int:
    """Return the frames the device sends in one exchange: the pause, then the utterance."""
    return voice_frames(step["pause_seconds"]) + voice_frames(step["speech_seconds"])


def voice_answer_frames(step: Mapping[str, Any]) -> int:
    """Return the frames of the spoken answer of one exchange, every sentence added up."""
    return sum(voice_frames(seconds) for seconds in step["sentence_seconds"])


def voice_session_counts(plan: SessionPlan) -> dict[str, int]:
    """Return the microphone frames, answer frames and tool calls of a voice_assistant plan."""
    return {
        "microphone_frames": sum(voice_microphone_frames(step) for step in plan.steps)
        + voice_frames(plan.params["linger_seconds"]),
        "answer_frames": sum(voice_answer_frames(step) for step in plan.steps),
        "tool_calls": sum(1 for step in plan.steps if step["tool_call"]),
    }


def ticker_updates(plan: SessionPlan, step: Mapping[str, Any]) -> int:
    """Return the updates one tick of a ticker_push plan pushes: one, or a burst in bursty mode."""
    return step["burst_updates"] if plan.params["mode"] == "bursty" else 1


def chat_counts(plan: SessionPlan) -> dict[str, int]:
    """Return how many messages of a chat_messaging plan the client sends and receives."""
    sent = sum(1 for step in plan.steps if step["direction"] == "sent")
    return {"sent": sent, "received": len(plan.steps) - sent}


# Binary framing of xiaozhi-esp32 audio by protocol version, in network byte
# order. Version 1 sends the bare Opus packet. Version 2 puts a 16-byte header
# in front (version, type, reserved, timestamp in ms, payload size) and
# version 3 a 4-byte one (type, reserved, payload size). Type 0 is Opus audio.
_AUDIO_HEADERS = {2: struct.Struct(">HHIII"), 3: struct.Struct(">BBH")}
AUDIO_PROTOCOL_VERSIONS = (1, 2, 3)
# Sizes of Opus packets vary around their planned mean, because VBR follows the signal (estimate: +-15%).
AUDIO_SIZE_SPREAD = 0.15


def audio_frame(version: int, payload: bytes, timestamp_ms: int) -> bytes:
    """Wrap one Opus packet for binary protocol `version`."""
    if version == 1:
        return payload
    if version == 2:
        return _AUDIO_HEADERS[2].pack(2, 0, 0, timestamp_ms & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        return _AUDIO_HEADERS[3].pack(0, 0, len(payload)) + payload
    raise ValueError(f"audio protocol version {version!r} is unknown; use one of {AUDIO_PROTOCOL_VERSIONS}")


def audio_payload(version: int, frame: bytes) -> bytes:
    """Return the Opus packet inside a binary frame of protocol `version`.

    Raises:
        ValueError: when the frame is shorter than its header or the header's payload size is wrong.
    """
    if version == 1:
        return frame
    header = _AUDIO_HEADERS[version]
    if len(frame) < header.size:
        raise ValueError(f"invalid audio frame: {len(frame)} bytes, shorter than the {header.size}-byte header "
                         f"of protocol version {version}")
    size = header.unpack_from(frame)[-1]
    if size != len(frame) - header.size:
        raise ValueError(f"invalid audio frame: its header gives a payload of {size} bytes, "
                         f"but {len(frame) - header.size} bytes follow it")
    return frame[header.size:]
