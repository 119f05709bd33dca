"""What the traffic client and server agree on: paths, headers, message types and limits.

The server is steered by its requests, in one of two ways. Most requests
carry explicit limits: a prompt sets how many tokens to stream and how fast,
a tool call how many progress steps to send and how big its result is, a
URL how many bytes to return. Sessions whose server side follows a script
of its own (a voice assistant's answers, chat messages from the other
person, ticker and dashboard pushes, SSE notifications) instead name their
session plan in the `PLAN_HEADER` request header, with the run's time scale
in `TIME_SCALE_HEADER`; the server draws the same plan from the same table
and plays its part of it. Either way the client's session plan decides a
whole session, server side included, and the server needs neither a seed
nor a time scale of its own.
"""

LLM_CHAT_PATH = "/v1/chat/stream"
IOT_TELEMETRY_PATH = "/iot/v1/telemetry"
IOT_SENSOR_PATH = "/iot/v1/sensor"
IOT_METER_PATH = "/iot/v1/meter"
IOT_CAMERA_PATH = "/iot/v1/camera"
# The path xiaozhi-esp32 servers conventionally serve the device protocol on.
VOICE_PATH = "/xiaozhi/v1/"
CHAT_PATH = "/chat/v1/socket"
TICKER_PATH = "/ticker/v1/stream"
DASHBOARD_PATH = "/dashboard/v1/live"

MCP_PATH = "/mcp"
# Pages and assets: /www/{size in bytes}/{file name}; the extension sets the content type.
WWW_PREFIX = "/www"
REST_TELEMETRY_PATH = "/api/v1/telemetry"
# /api/v1/items/{size in bytes}?changed=0|1: 304 Not Modified when changed=0 and the ETag matches.
REST_POLL_PREFIX = "/api/v1/items"
# /files/{size in bytes}/{file name}?rate={bytes/s}
FILES_PREFIX = "/files"
SSE_PATH = "/api/v1/events"
UPDATE_PATH = "/api/v1/update"
LLM_COMPLETIONS_PATH = "/v1/chat/completions"

PLAN_HEADER = "aiflowd-plan"
TIME_SCALE_HEADER = "aiflowd-time-scale"

LLM_MODEL = "aiflowd-test-llm"
# MCP protocol revisions the client speaks. The handshake revision has
# initialize, a session id and a GET stream. The stateless revision starts
# with server/discover and has no session id or GET stream.
MCP_HANDSHAKE_REVISION = "2025-11-25"
MCP_STATELESS_REVISION = "2026-07-28"
# Each MCP tool by name, with the argument that carries its subject text.
MCP_TOOLS = {"search_documents": "query", "run_query": "sql", "summarize_file": "path"}

# Opus audio of the voice assistant: one frame every 60 ms both ways.
VOICE_FRAME_SECONDS = 0.060

# Server-side limits on what a request may ask for, so that a malformed or
# hostile request cannot keep the server busy for long or make it allocate much.
MAX_ANSWER_TOKENS = 5000
MAX_TOKENS_PER_FRAME = 64
MAX_WAIT_SECONDS = 120.0
MAX_TOKENS_PER_SECOND = 100_000.0
MAX_BODY_BYTES = 1_000_000
MAX_PROGRESS_STEPS = 100
# Downloads are streamed from one reused block, so they may be larger than a body.
MAX_DOWNLOAD_BYTES = 100_000_000
MAX_DOWNLOAD_RATE = 1.0e10
