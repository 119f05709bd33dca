"""Server side of every scenario: WebSocket handlers, MCP tools and HTTPS routes.

Importing this module registers every built-in WebSocket handler in
`WEBSOCKET_ROUTES` (see `tools.traffic.routes` for how a handler is written
and registered); `build_https_app` builds the HTTPS side.
"""

from tools.traffic import ws_handlers
from tools.traffic.https_app import build_https_app, build_mcp_server
from tools.traffic.routes import (
    WEBSOCKET_ROUTES,
    RequestError,
    ServerStats,
    websocket_handler,
    websocket_process_request,
)

__all__ = ["WEBSOCKET_ROUTES", "RequestError", "ServerStats", "build_https_app", "build_mcp_server",
           "websocket_handler", "websocket_process_request", "ws_handlers"]
