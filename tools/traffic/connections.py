"""How the traffic client opens TCP connections and learns their ports and lifetimes.

Every connection a session opens is reported once, when it closes, to a
`ConnectionClosed` callback with its local and remote address and the wall
clock just before the connect and just after the close:

- WebSockets: the client connects the socket itself, so it has the source
  port before the opening handshake and reports connections whose handshake
  failed too.
- httpx2 (the MCP SDK client and the HTTPS scenarios): a network backend
  wraps every stream httpcore2 opens. A response hook could read the port
  from `response.extensions["network_stream"]`, but it is not called when a
  connection closes. The SDK client opens and drops connections on its own
  (one per POST answered with SSE, the GET stream, reconnects), so only the
  backend gets every start and end right.

Traffic goes only to loopback or the testbed range: `check_test_address`
rejects anything else before a socket is made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpcore2
import httpx2
from websockets.asyncio.client import ClientConnection, connect

# Loopback, and the benchmarking range (RFC 2544) the testbed namespaces use.
TEST_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))

# Timeouts of the MCP SDK's own HTTP client (mcp.shared._httpx_utils, mcp 2.3.0):
# a server may hold an SSE response open for minutes between events.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# httpx2's default pool limits; keep-alive connections idle this long are closed.
HTTP_LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)

WEBSOCKET_OPEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClosedConnection:
    """A TCP connection that has closed: its two ends and its lifetime in epoch seconds."""

    local: tuple[str, int]
    remote: tuple[str, int]
    start: float
    end: float


ConnectionClosed = Callable[[ClosedConnection], None]


def check_test_address(value: str, option: str) -> str:
    """Return `value` if it is an IPv4 address on loopback or in 198.18.0.0/15.

    Raises:
        ValueError: naming `option`, the value and the allowed ranges.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{option} {value!r} is not an IP address; pass the test address itself, e.g. 127.0.0.1 or 198.19.0.2"
        ) from None
    if address.version != 4 or not any(address in network for network in TEST_NETWORKS):
        allowed = " or ".join(str(network) for network in TEST_NETWORKS)
        raise ValueError(
            f"{option} {value} is outside {allowed}; the traffic generator only talks to loopback "
            "and to the testbed namespaces"
        )
    return value


@asynccontextmanager
async def open_websocket(
    uri: str,
    host: str,
    port: int,
    on_closed: ConnectionClosed,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[ClientConnection]:
    """Connect a WebSocket to `host`:`port`, report the connection once it is closed.

    `uri` gives the path and the Host header; TLS is used when `ssl_context`
    is set, verified against `host`. The connection is closed with a closing
    handshake on exit, so the flow ends with FIN. Extra `options` go to
    `websockets.asyncio.client.connect`.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    start = time.time()
    try:
        async with asyncio.timeout(WEBSOCKET_OPEN_TIMEOUT):
            await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    local = sock.getsockname()
    remote = sock.getpeername()
    try:
        async with connect(
            uri,
            sock=sock,
            ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
            # Never route through a proxy from the environment: traffic stays on the test network.
            proxy=None,
            open_timeout=WEBSOCKET_OPEN_TIMEOUT,
            **options,
        ) as websocket:
            yield websocket
    finally:
        # The asyncio transport closes the socket once it owns it; this covers a
        # failure before the transport took it over and is a no-op otherwise.
        sock.close()
        on_closed(ClosedConnection(local, remote, start, time.time()))


def recording_http_client(
    ssl_context: ssl.SSLContext, on_closed: ConnectionClosed, **options: Any
) -> httpx2.AsyncClient:
    """Build an `httpx2.AsyncClient` that reports every TCP connection it closes.

    Proxy and TLS settings from the environment are ignored. Extra
    `options` go to `httpx2.AsyncClient`.
    """
    options.setdefault("timeout", HTTP_TIMEOUT)
    return httpx2.AsyncClient(
        transport=_RecordingTransport(ssl_context, on_closed),
        trust_env=False,
        **options,
    )


class _RecordingTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, ssl_context: ssl.SSLContext, on_closed: ConnectionClosed) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=HTTP_LIMITS)
        # NOTE: httpx2 2.16 has no parameter for an httpcore2 network backend,
        # so the pool it just built is replaced by the same pool with a
        # recording backend. The isinstance check fails loudly if a later
        # httpx2 builds its pool differently.
        if not isinstance(getattr(self, "_pool", None), httpcore2.AsyncConnectionPool):
            raise RuntimeError(
                f"httpx2 {httpx2.__version__} no longer keeps an httpcore2.AsyncConnectionPool in "
                "AsyncHTTPTransport._pool; update tools/traffic/connections.py for this version"
            )
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=HTTP_LIMITS.max_connections,
            max_keepalive_connections=HTTP_LIMITS.max_keepalive_connections,
            keepalive_expiry=HTTP_LIMITS.keepalive_expiry,
            network_backend=_RecordingBackend(on_closed),
        )


class _OpenConnection:
    """Bookkeeping of one TCP connection; `finish` reports it exactly once."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int], start: float, on_closed: ConnectionClosed):
        self.local = local
        self.remote = remote
        self.start = start
        self.on_closed = on_closed
        self.finished = False

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.on_closed(ClosedConnection(self.local, self.remote, self.start, time.time()))


class _RecordingStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, connection: _OpenConnection) -> None:
        self._inner = inner
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._connection.finish()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        try:
            tls_stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # httpcore2 closes the TCP stream when the handshake fails and drops this wrapper.
            self._connection.finish()
            raise
        return _RecordingStream(tls_stream, self._connection)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _RecordingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, on_closed: ConnectionClosed) -> None:
        self._inner = httpcore2.AnyIOBackend()
        self._on_closed = on_closed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        start = time.time()
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        local = stream.get_extra_info("client_addr")
        remote = stream.get_extra_info("server_addr")
        return _RecordingStream(stream, _OpenConnection(local, remote, start, self._on_closed))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
