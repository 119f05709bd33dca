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

With `SourcePorts`, both kinds bind their client port themselves, taking the
ports of the kernel's ephemeral range in turn. The kernel's own choice hands
out a port again within minutes, and a capture tool that sees the same
5-tuple twice in a short time may merge the two connections into one flow.

Traffic goes only to loopback or the testbed range: `check_test_address`
rejects anything else before a socket is made.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.abc
import httpcore2
import httpx2
# NOTE: AnyIOStream is private to httpcore2 2.16. AnyIOBackend.connect_tcp
# builds the same stream but cannot bind a client port, so a source-port
# connect wraps its own socket in it.
from httpcore2._backends.anyio import AnyIOStream
from websockets.asyncio.client import ClientConnection, connect

logger = logging.getLogger(__name__)

# Loopback, and the benchmarking range (RFC 2544) the testbed namespaces use.
TEST_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))

# Timeouts of the MCP SDK's own HTTP client (mcp.shared._httpx_utils, mcp 2.3.0):
# a server may hold an SSE response open for minutes between events.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# httpx2's default pool limits; keep-alive connections idle this long are closed.
HTTP_LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)

WEBSOCKET_OPEN_TIMEOUT = 10.0

EPHEMERAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Ports tried before a connect gives up: other programs may hold a few ports
# of the range, but not this many in a row.
MAX_BIND_ATTEMPTS = 256


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


class SourcePorts:
    """Client ports handed out in turn from [low, high], so a run reuses a port only after the whole range.

    Worker `worker` of `workers` takes every `workers`-th port starting at
    low + `worker`, so worker processes never pick the same port. A port
    that is in use (by another program, or still in TIME_WAIT) is skipped.
    """

    def __init__(self, low: int, high: int, worker: int = 0, workers: int = 1) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"client port range {low}-{high} is invalid; expected 1 <= low <= high <= 65535")
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
        if high - low + 1 < workers:
            raise ValueError(f"client port range {low}-{high} has fewer ports than the {workers} workers")
        self.low = low
        self.high = high
        self.worker = worker
        self.workers = workers
        self._next = low + worker

    @classmethod
    def from_system(cls, worker: int = 0, workers: int = 1) -> SourcePorts:
        """Use the kernel's ephemeral port range of this network namespace."""
        try:
            low, high = map(int, EPHEMERAL_PORT_RANGE.read_text().split())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the ephemeral port range from {EPHEMERAL_PORT_RANGE}: {exc}") from None
        return cls(low, high, worker, workers)

    def take(self) -> int:
        """Return the next port of this worker's share of the range, wrapping around at the end."""
        port = self._next
        self._next += self.workers
        if self._next > self.high:
            self._next = self.low + self.worker
        return port

    def bind(self, sock: socket.socket) -> int:
        """Bind `sock` to the next free port on every local address and return the port.

        Raises:
            OSError: EADDRINUSE when MAX_BIND_ATTEMPTS ports in a row are taken.
        """
        for _ in range(MAX_BIND_ATTEMPTS):
            port = self.take()
            try:
                sock.bind(("", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                logger.debug("client port %d is in use; trying the next one", port)
                continue
            return port
        raise OSError(
            errno.EADDRINUSE,
            f"no free client port after {MAX_BIND_ATTEMPTS} attempts in {self.low}-{self.high}; "
            "too many connections are open at once for this range",
        )


@asynccontextmanager
async def open_websocket(
    uri: str,
    host: str,
    port: int,
    on_closed: ConnectionClosed,
    ssl_context: ssl.SSLContext | None = None,
    source_ports: SourcePorts | None = None,
    **options: Any,
) -> AsyncIterator[ClientConnection]:
    """Connect a WebSocket to `host`:`port`, report the connection once it is closed.

    `uri` gives the path and the Host header; TLS is used when `ssl_context`
    is set, verified against `host`. The client port comes from
    `source_ports` if given, else from the kernel. The connection is closed
    with a closing handshake on exit, so the flow ends with FIN. Extra
    `options` go to `websockets.asyncio.client.connect`.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    start = time.time()
    try:
        if source_ports is not None:
            source_ports.bind(sock)
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
    ssl_context: ssl.SSLContext,
    on_closed: ConnectionClosed,
    source_ports: SourcePorts | None = None,
    **options: Any,
) -> httpx2.AsyncClient:
    """Build an `httpx2.AsyncClient` that reports every TCP connection it closes.

    Client ports come from `source_ports` if given, else from the kernel.
    Proxy and TLS settings from the environment are ignored. Extra
    `options` go to `httpx2.AsyncClient`.
    """
    options.setdefault("timeout", HTTP_TIMEOUT)
    return httpx2.AsyncClient(
        transport=_RecordingTransport(ssl_context, on_closed, source_ports),
        trust_env=False,
        **options,
    )


class _RecordingTransport(httpx2.AsyncHTTPTransport):
    def __init__(
        self, ssl_context: ssl.SSLContext, on_closed: ConnectionClosed, source_ports: SourcePorts | None
    ) -> None:
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
            network_backend=_RecordingBackend(on_closed, source_ports),
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
    def __init__(self, on_closed: ConnectionClosed, source_ports: SourcePorts | None) -> None:
        self._inner = httpcore2.AnyIOBackend()
        self._on_closed = on_closed
        self._source_ports = source_ports

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        start = time.time()
        if self._source_ports is None:
            stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        else:
            stream = await _connect_from_port(self._source_ports, host, port, timeout)
        local = stream.get_extra_info("client_addr")
        remote = stream.get_extra_info("server_addr")
        return _RecordingStream(stream, _OpenConnection(local, remote, start, self._on_closed))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _connect_from_port(
    source_ports: SourcePorts, host: str, port: int, timeout: float | None
) -> httpcore2.AsyncNetworkStream:
    """Connect to `host`:`port` from the next port of `source_ports`, as `AnyIOBackend.connect_tcp` would.

    Errors are mapped to httpcore2's ConnectError and ConnectTimeout, which
    httpx2 turns into its own exceptions of the same names.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    # anyio's connect_tcp and asyncio's transports turn Nagle off, and so do
    # browsers and common HTTP clients; from_socket leaves the socket as it
    # is. With Nagle on, a request written in two parts waits for the
    # server's delayed ACK (40 ms on Linux), a stall real clients do not show.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        source_ports.bind(sock)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
        stream = await anyio.abc.SocketStream.from_socket(sock)
    except TimeoutError:
        sock.close()
        raise httpcore2.ConnectTimeout(f"connect to {host}:{port} timed out after {timeout} s") from None
    except OSError as exc:
        sock.close()
        raise httpcore2.ConnectError(f"connect to {host}:{port} failed: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return AnyIOStream(stream)
