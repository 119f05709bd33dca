"""What the traffic client and server agree on: paths, message types and limits.

The server is steered by its requests. A prompt sets how many tokens to
stream and how fast. A tool call sets how many progress steps to send and how
big its result is. A page URL sets how many bytes to return. The client's session plan
therefore decides a whole session, server side included, and the server needs
neither a seed nor a time scale of its own.
"""

LLM_CHAT_PATH = "/v1/chat/stream"
IOT_TELEMETRY_PATH = "/iot/v1/telemetry"
MCP_PATH = "/mcp"
# Pages and assets: /www/{size in bytes}/{file name}; the extension sets the content type.
WWW_PREFIX = "/www"
REST_TELEMETRY_PATH = "/api/v1/telemetry"

LLM_MODEL = "aiflowd-test-llm"
# MCP protocol revisions the client speaks. The handshake revision has
# initialize, a session id and a GET stream. The stateless revision starts
# with server/discover and has no session id or GET stream.
MCP_HANDSHAKE_REVISION = "2025-11-25"
MCP_STATELESS_REVISION = "2026-07-28"
# Each MCP tool by name, with the argument that carries its subject text.
MCP_TOOLS = {"search_documents": "query", "run_query": "sql", "summarize_file": "path"}

# Server-side limits on what a request may ask for, so that a malformed or
# hostile request cannot keep the server busy for long or make it allocate much.
MAX_ANSWER_TOKENS = 5000
MAX_WAIT_SECONDS = 120.0
MAX_TOKENS_PER_SECOND = 100_000.0
MAX_BODY_BYTES = 1_000_000
MAX_PROGRESS_STEPS = 100
