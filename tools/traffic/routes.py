"""Server plumbing shared by every handler: counts, request validation, WebSocket routing, plan headers.

WebSocket handlers register by path with `websocket_route`. A route that
plays a scripted session names its scenario. The opening handshake of such
a route must carry the session's plan reference and the time scale
(`PLAN_HEADER`, `TIME_SCALE_HEADER`), or it is rejected with 400.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WebSocketRequest
from websockets.http11 import Response as WebSocketResponse

from tools.traffic.inbox import InboxError
from tools.traffic.pacing import Pace, check_time_scale
from tools.traffic.protocol import PLAN_HEADER, TIME_SCALE_HEADER
from tools.traffic.scenarios import SessionPlan, plan_from_reference

logger = logging.getLogger(__name__)


class ServerStats:
    """Counts of what the server served and, optionally, every TCP connection it saw.

    Connections are (client address, client port, server port) triples. They
    are kept only when `track_connections` is set, because a long run makes
    hundreds of thousands of them. `open_websockets` and `open_requests`
    count what is in progress, for the progress log.
    """

    def __init__(self, track_connections: bool = False) -> None:
        self.events: Counter[str] = Counter()
        self.connections: set[tuple[str, int, int]] | None = set() if track_connections else None
        self.open_websockets = 0
        self.open_requests = 0

    def saw_connection(self, client: tuple[str, int], server_port: int) -> None:
        if self.connections is not None:
            self.connections.add((client[0], client[1], server_port))

    def merge(self, events: Mapping[str, int], connections: list[tuple[str, int, int]] | None) -> None:
        """Add the counts and connections another server process reported."""
        self.events.update(events)
        if self.connections is not None and connections:
            self.connections.update(tuple(connection) for connection in connections)


class RequestError(ValueError):
    """A client request asks for something invalid or out of limits."""


def number(message: Mapping[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    """Return field `name` of `message` if it is a number (an int when `integer`) in [low, high].

    Raises:
        RequestError: naming the field, the allowed range and the value.
    """
    value = message.get(name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        expected = "an integer" if integer else "a number"
        raise RequestError(f"field {name!r} must be {expected} in [{low}, {high}], got {value!r}")
    return value


def json_object(message: str | bytes, description: str) -> dict[str, Any]:
    """Parse a JSON object, raising RequestError naming `description` when it is not one."""
    try:
        value = json.loads(message)
    except ValueError:
        raise RequestError(f"{description} is not JSON") from None
    if not isinstance(value, dict):
        raise RequestError(f"{description} is not a JSON object")
    return value


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def peer(connection: ServerConnection) -> str:
    host, port = connection.remote_address[:2]
    return f"{host}:{port}"


def peer_of(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


@dataclass(frozen=True)
class ScriptedSession:
    """The plan a request named and the pace of its run."""

    plan: SessionPlan
    pace: Pace


def scripted_session(headers: Mapping[str, str], scenario: str, family: str | None = None) -> ScriptedSession:
    """Draw the plan that request `headers` name for `scenario`; `family`, if given, must match it.

    Raises:
        RequestError: naming the missing or invalid header.
    """
    reference = headers.get(PLAN_HEADER)
    if reference is None:
        raise RequestError(f"header {PLAN_HEADER!r} is missing; a {scenario} session must name its plan")
    try:
        plan = plan_from_reference(reference, scenarios=[scenario])
    except ValueError as exc:
        raise RequestError(f"header {PLAN_HEADER!r}: {exc}") from None
    if family is not None and plan.family != family:
        raise RequestError(f"header {PLAN_HEADER!r} names family {plan.family!r}, but this listener serves {family!r}")
    text = headers.get(TIME_SCALE_HEADER)
    try:
        time_scale = check_time_scale(float(text) if text is not None else None, f"header {TIME_SCALE_HEADER!r}")
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return ScriptedSession(plan, Pace(time_scale))


WebSocketHandler = Callable[[ServerConnection, ServerStats], Awaitable[None]]


@dataclass(frozen=True)
class WebSocketRoute:
    """A WebSocket endpoint: its handler and, for a scripted route, the scenario it plays."""

    handler: WebSocketHandler
    scenario: str | None = None


WEBSOCKET_ROUTES: dict[str, WebSocketRoute] = {}
# Scripted sessions drawn during the opening handshake, for the handler to pick up.
_SESSIONS: weakref.WeakKeyDictionary[ServerConnection, ScriptedSession] = weakref.WeakKeyDictionary()


def websocket_route(path: str, scenario: str | None = None) -> Callable[[WebSocketHandler], WebSocketHandler]:
    """Register the decorated coroutine function as the WebSocket handler of `path`.

    With `scenario`, the route plays that scenario's script, and the handler
    gets the session's plan from `session_of`.
    """

    def register(handler: WebSocketHandler) -> WebSocketHandler:
        if path in WEBSOCKET_ROUTES:
            raise ValueError(f"WebSocket path {path!r} already has a handler ({WEBSOCKET_ROUTES[path].handler.__name__})")
        WEBSOCKET_ROUTES[path] = WebSocketRoute(handler, scenario)
        return handler

    return register


def session_of(connection: ServerConnection) -> ScriptedSession:
    """Return the scripted session whose plan the opening handshake of `connection` named."""
    return _SESSIONS[connection]


def websocket_process_request(stats: ServerStats) -> Callable[[ServerConnection, WebSocketRequest], Any]:
    """Build the websockets `process_request` hook.

    It records the peer, responds 404 to unknown paths and 400 to a scripted
    route whose plan headers are missing or invalid.
    """

    def process_request(connection: ServerConnection, request: WebSocketRequest) -> WebSocketResponse | None:
        stats.saw_connection(connection.remote_address, connection.local_address[1])
        path = urlsplit(request.path).path
        route = WEBSOCKET_ROUTES.get(path)
        if route is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {request.path}\n")
        if route.scenario is not None:
            family = "wss" if connection.transport.get_extra_info("ssl_object") is not None else "ws"
            try:
                _SESSIONS[connection] = scripted_session(request.headers, route.scenario, family)
            except RequestError as exc:
                stats.events["websocket_rejected"] += 1
                logger.warning("%s from %s: rejected: %s", path, peer(connection), exc)
                return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        return None

    return process_request


def websocket_handler(stats: ServerStats) -> Callable[[ServerConnection], Awaitable[None]]:
    """Build the websockets connection handler that dispatches on the request path."""

    async def handle(connection: ServerConnection) -> None:
        path = urlsplit(connection.request.path).path
        stats.open_websockets += 1
        try:
            await WEBSOCKET_ROUTES[path].handler(connection, stats)
        except ConnectionClosed as exc:
            stats.events["websocket_closed_early"] += 1
            logger.warning("%s from %s: connection closed before the server was done: %s", path, peer(connection), exc)
        except (InboxError, RequestError) as exc:
            stats.events["websocket_aborted"] += 1
            logger.warning("%s from %s: session aborted: %s", path, peer(connection), exc)
            # 1008: policy violation. A close reason must fit in 123 bytes.
            await connection.close(1008, str(exc)[:120])
        finally:
            stats.open_websockets -= 1

    return handle
