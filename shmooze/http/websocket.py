"""Server-side WebSockets inside a WSGI app.

Built on wsproto (sans-I/O). The server side takes over the raw connection of a
WSGI request: ``environ['gunicorn.socket']`` under gunicorn (meant for the
``gevent`` worker class, where every connection is a greenlet) or
``environ['werkzeug.socket']`` under the Werkzeug development server::

    def app(environ, start_response):
        if is_websocket_request(environ):
            return websocket_response(environ, start_response, handler)
        ...

    def handler(ws: WebSocket) -> None:
        while (text := ws.receive()) is not None:
            ws.send(text)

``websocket_response`` checks the handshake and the Origin, answers ``101``,
runs ``handler(ws)`` and then hands the connection back to the server so that
nothing more is written on it (see :func:`finish_request`).

Only text messages are carried (binary ones close the connection with 1003);
no extensions (permessage-deflate would cost hundreds of KiB per connection).
Under gunicorn raise ``--worker-connections`` above the number of WebSocket
clients you expect: each one holds a connection slot for its whole life, unless
a loop holds it (``hold``, :mod:`shmooze.http.wsloop`: the gateway's way).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, generate_accept_token

from shmooze.errors import ShmoozeError
from shmooze.http.jsonapp import finish_request
from shmooze.registry import Declared
from shmooze.system.cooperative import green_library, pollers

log = logging.getLogger(__name__)

#: Largest message accepted by default (bytes of UTF-8); bigger ones close with 1009.
MAX_MESSAGE_BYTES = Declared.max_body_bytes.default
#: Seconds a send may block on a stalled peer before the connection is dropped.
SEND_TIMEOUT = 10.0
#: Seconds to wait for the peer's answer to our close frame.
CLOSE_TIMEOUT = 5.0
#: Bytes asked of one ``recv``.
RECV_BYTES = 65536
#: The server pings this often (seconds) ...
PING_INTERVAL = Declared.ws_ping_interval.default
#: ... and closes a connection from which nothing (not even a pong) came for this long.
IDLE_TIMEOUT = Declared.ws_idle_timeout.default
#: Seconds a message may take from its first byte to its last.
MESSAGE_TIMEOUT = Declared.ws_message_timeout.default
#: Pings a client may send per second (a burst of as many is allowed); more close with 1008.
MAX_PINGS = Declared.ws_max_pings.default
#: Bytes written at once; the writer lets other greenlets run between pieces.
WRITE_PIECE = 256 << 10
#: Reads in a row after which a reader lets other greenlets run, even when more data is waiting.
READS_BEFORE_YIELD = 8

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_ABNORMAL = 1006
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

Handler = Callable[["WebSocket"], Any]
StartResponse = Callable[..., Any]


class WebSocketError(ShmoozeError):
    """Root of the WebSocket errors."""


class WebSocketClosed(WebSocketError, ConnectionError):
    """The connection is closed (or closing): nothing more can be sent."""


class HandshakeError(WebSocketError):
    """The opening handshake failed; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b""):
        super().__init__(message)
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- requests


def _header_tokens(environ: Mapping[str, Any], key: str) -> set[str]:
    value = environ.get(key) or ""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def is_websocket_request(environ: Mapping[str, Any]) -> bool:
    """True when the request asks to upgrade to a WebSocket (GET, Upgrade, Connection)."""
    return (
        environ.get("REQUEST_METHOD") == "GET"
        and "websocket" in _header_tokens(environ, "HTTP_UPGRADE")
        and "upgrade" in _header_tokens(environ, "HTTP_CONNECTION")
    )


def handshake_problem(environ: Mapping[str, Any]) -> str | None:
    """What is wrong with this opening handshake (RFC 6455 4.2.1), or None if it is valid."""
    if environ.get("REQUEST_METHOD") != "GET":
        return "a websocket handshake must be a GET request"
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return "a websocket handshake must use HTTP/1.1"
    if "websocket" not in _header_tokens(environ, "HTTP_UPGRADE"):
        return "missing 'Upgrade: websocket' header"
    if "upgrade" not in _header_tokens(environ, "HTTP_CONNECTION"):
        return "missing 'Connection: Upgrade' header"
    if (environ.get("HTTP_SEC_WEBSOCKET_VERSION") or "").strip() != "13":
        return "unsupported Sec-WebSocket-Version (only 13 is)"
    key = (environ.get("HTTP_SEC_WEBSOCKET_KEY") or "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (ValueError, binascii.Error):
        return "missing or malformed Sec-WebSocket-Key header"
    return None


def host_name(value: str) -> str:
    """The host of a ``Host`` header (or a bare host or address): lower case, no port or brackets."""
    value = value.strip().lower()
    if value.count(":") > 1 and not value.startswith("["):
        return value  # a bare IPv6 address
    try:
        name = urlsplit("//" + value).hostname
    except ValueError:
        name = None
    return (name or value).rstrip(".")


def _host_port(value: str, scheme: str) -> str | None:
    """``host[:port]`` lower-cased, without the scheme's default port; None if malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def _split_origin(origin: str) -> tuple[str, str] | None:
    """``(scheme, host[:port])`` of an Origin value, or None (e.g. ``null``)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return None
    host_port = _host_port(parts.netloc.rsplit("@", 1)[-1], scheme)
    return (scheme, host_port) if host_port else None


def check_origin(environ: Mapping[str, Any], allowed: list[str] | None = None) -> bool:
    """Whether the request's Origin may open a WebSocket.

    Allowed when there is no Origin header (non-browser clients), when the
    Origin's scheme and host:port are the request's own (scheme exactly ``wsgi.url_scheme``;
    host the ``Host`` header), or when it is listed in
    ``allowed``: a full origin (``https://app.example.com``, the way to admit the pages of a TLS
    proxy in front of a plain-http gateway), a bare ``host[:port]``, or ``*`` for any.
    """
    origin = (environ.get("HTTP_ORIGIN") or "").strip()
    if not origin:
        return True
    allowed = [entry.strip() for entry in (allowed or []) if entry and entry.strip()]
    if "*" in allowed:
        return True
    bare = origin.rstrip("/").lower()
    if any(entry.rstrip("/").lower() == bare for entry in allowed):
        return True
    split = _split_origin(origin)
    if split is None:
        return False
    scheme, host_port = split
    host = environ.get("HTTP_HOST")
    if not host and environ.get("SERVER_NAME"):
        host = f"{environ['SERVER_NAME']}:{environ.get('SERVER_PORT', '')}".rstrip(":")
    # The scheme must be the request's own, exactly: an http page (anyone on the path may write it)
    # never drives an https gateway, and an https origin the gateway does not serve is a foreign one.
    own_scheme = str(environ.get("wsgi.url_scheme") or "http").lower()
    if host and scheme == own_scheme and _host_port(host, scheme) == host_port:
        return True
    for entry in allowed:
        if "://" in entry:
            if _split_origin(entry) == split:
                return True
        elif _host_port(entry, scheme) == host_port:
            return True
    return False


# --------------------------------------------------------------------------- connections


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())




def _send_nowait(sock: socket.socket, data: bytes) -> int:
    """Write what the socket takes now (0 when its buffer is full), never waiting.

    A gevent socket is asked with ``timeout=0``; a standard socket with a timeout would poll
    first (and wait), so it is polled here with no wait.
    """
    try:
        if green_library(sock) == "gevent":
            return sock.send(data, 0, timeout=0.0)  # type: ignore[call-arg]
        if sock.gettimeout() != 0.0:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
            if not poller.poll(0):
                return 0
        return sock.send(data)
    except BlockingIOError:
        return 0


def _let_others_run() -> None:
    """Yield to other greenlets (under gevent ``time.sleep`` is gevent's) or threads."""
    time.sleep(0)


def _wait_readable(sock: socket.socket, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable (or at EOF); False after ``timeout`` seconds."""
    fd = sock.fileno()
    mask = select.POLLIN | select.POLLPRI
    native, cooperative = pollers()
    poller = native()
    poller.register(fd, mask)
    if poller.poll(0):
        return True
    if timeout is not None and timeout <= 0:
        return False
    poller = cooperative()
    poller.register(fd, mask)
    return bool(poller.poll(None if timeout is None else timeout * 1000.0))


class _Flag:
    """``threading.Event`` for a flag that is mostly only read: its lock and condition are made when
    someone first waits (an idle watcher holds one; an Event costs a kilobyte)."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._event is None:
            self._event = threading.Event()
            if self._set:  # (set between the check and the Event)
                self._event.set()
        return self._event.wait(timeout)


class Endpoint:
    """Message framing, ping/pong and the close handshake shared by both sides.

    One greenlet (or thread) at a time reads; any number may :meth:`send`.
    """

    _owns_socket = False

    def __init__(
        self,
        sock: socket.socket,
        conn: Connection,
        *,
        max_message_size: int = MAX_MESSAGE_BYTES,
        close_timeout: float = CLOSE_TIMEOUT,
    ):
        self._sock = sock
        self._conn = conn
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        #: Code of the close frame received from the peer; 1006 if the connection dropped.
        self.close_code: int | None = None
        #: Reason of the close frame received from the peer.
        self.close_reason: str = ""
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._done = _Flag()
        self._messages: list[str] = []  # (not a deque: an empty one is 600 bytes, times every idle watcher)
        self._parts: list[str] = []
        self._size = 0
        self._pongs: list[bytes] = []  # the last 16 pongs' payloads
        self._unsent = b""  # the end of a frame the socket took only part of (written before anything else)
        self._close_deadline = 0.0
        self._closing = False  # a close frame was sent, or is on its way
        # Keep-alive and budgets; the server side sets them (None: off).
        self.ping_interval: float | None = None
        self.idle_timeout: float | None = None
        self.message_timeout: float | None = None
        self.max_pings: int | None = None
        self._last_heard = self._last_ping = time.monotonic()
        self._partial_since: float | None = None  # when the bytes of an unfinished message began
        self._ping_tokens = 0.0
        self._ping_refilled = time.monotonic()
        self._reads = 0
        #: Held by a :class:`~shmooze.http.wsloop.SocketLoop` (which reads it, and is told here when the
        #: connection ends): nothing in here then blocks the reader.
        self._release: Callable[[], None] | None = None
        self._fd = -1  # (the descriptor, once held: written with os.write)
        #: Whether a loop holds the connection (so it runs under gevent, see :meth:`hold`).
        self.held = False

    # -- public API

    def keep_alive(self, ping_interval: float | None, idle_timeout: float | None, message_timeout: float | None,
                   max_pings: int | None) -> None:
        """The server side's keep-alive and budgets (see :func:`websocket_response`; None: off); the
        ping budget starts full."""
        self.ping_interval, self.idle_timeout, self.message_timeout = ping_interval, idle_timeout, message_timeout
        self.max_pings = max_pings
        self._ping_tokens = float(max_pings or 0)

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection dropped."""
        return self._done.is_set() or self._conn.state is not ConnectionState.OPEN

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``)."""
        return self._sock.fileno()

    def send(self, text: str) -> None:
        """Send one text message; raises :class:`WebSocketClosed` if the connection is closed."""
        if not isinstance(text, str):
            raise TypeError(f"send() takes str, not {type(text).__name__}")
        self._send_event(TextMessage(data=text))

    def receive(self, timeout: float | None = None) -> str | None:
        """Next text message; None when the connection is closed or ``timeout`` seconds passed.

        Answers pings and the close handshake while waiting. Tell a timeout from
        a close with :attr:`closed`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._messages:
                return self._messages.pop(0)
            if self._done.is_set():
                return None
            wait = _remaining(deadline)
            if not self._recv_lock.acquire(timeout=-1 if wait is None else wait):
                return None
            try:
                if self._messages or self._done.is_set():
                    continue
                if self._conn.state is not ConnectionState.OPEN:
                    self._drain()
                    continue
                wait = _remaining(deadline)
                tick = self._keep_alive()
                if tick is not None and (wait is None or tick < wait):
                    self._read(tick)  # then the loop checks the keep-alive again
                elif not self._read(wait):
                    return None
            finally:
                self._recv_lock.release()

    def next_message_waiting(self) -> bool:
        """Whether a whole message has been read and not yet taken."""
        return bool(self._messages)

    def next_message(self) -> str | None:
        """The next message already read, if any (never waits)."""
        return self._messages.pop(0) if self._messages else None

    def read_ready(self, fd: int) -> None:
        """For the loop that holds the connection (see :meth:`hold`): read what the socket has (it said
        it is readable; ``fd`` is its descriptor) and act on it, never waiting."""
        try:
            data = os.read(fd, RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("websocket receive failed: %s", exc)
            data = b""
        self._took(data)

    def hold(self, release: Callable[[], None]) -> None:
        """A loop reads the connection from now on (it holds the reading lock); ``release`` is called
        once the connection ends, before its socket is closed."""
        self._recv_lock.acquire()
        self._release = release
        self._owns_socket = True
        self._fd = self._sock.fileno()
        self.held = True

    def keep_alive_tick(self) -> float:
        """For the loop that holds the connection: ping, close an idle one, end a close handshake
        whose answer is late; return the seconds until this needs doing again."""
        if self._done.is_set():
            return 5.0
        if self._conn.state is not ConnectionState.OPEN or self._closing:
            left = self._close_deadline - time.monotonic()
            if left <= 0:
                self._finish()
            return max(0.05, left)
        tick = self._keep_alive()
        return 5.0 if tick is None else tick

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start (or finish) the close handshake and wait up to ``close_timeout`` for it."""
        if self._done.is_set():
            return
        self._messages.clear()
        self._start_close(code, reason)
        if self._recv_lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._recv_lock.release()
        else:
            # Another greenlet is reading: it will see the peer's answer.
            self._done.wait(self.close_timeout)
            self._finish()

    def drop(self, code: int = CLOSE_POLICY, reason: str = "") -> None:
        """Close at once, without the close handshake, for a peer that stopped reading.

        Nothing here waits on the peer (its send buffer may be full): the connection is shut,
        which ends any send or receive in progress on other greenlets.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._finish()

    # -- internals

    def _keep_alive(self) -> float | None:
        """Ping, or close an idle connection or a message that takes too long; return the seconds
        until this needs doing again (None when the keep-alive is off)."""
        if self.ping_interval is None and self.idle_timeout is None and self.message_timeout is None:
            return None
        now = time.monotonic()
        if self.message_timeout is not None and self._partial_since is not None \
                and now - self._partial_since > self.message_timeout:
            log.warning("closing a websocket: a message was not finished within %g s", self.message_timeout)
            self._fail(CLOSE_POLICY, f"message not finished within {self.message_timeout:g} s")
            return 0.0
        if self.idle_timeout is not None and now - self._last_heard > self.idle_timeout:
            log.info("closing a websocket: nothing heard (not even a pong) for %g s", self.idle_timeout)
            self._fail(CLOSE_GOING_AWAY, f"nothing heard for {self.idle_timeout:g} s")
            return 0.0
        if self.ping_interval is not None and now - self._last_ping >= self.ping_interval:
            self._last_ping = now
            self._send_quietly(Ping(payload=b"shmooze"))
        checks = [self.ping_interval, self.idle_timeout, self.message_timeout]
        return max(0.05, min(c for c in checks if c is not None) / 4)

    def _pings_allowed(self) -> bool:
        """A token bucket: ``max_pings`` a second, in bursts of as many."""
        if self.max_pings is None:
            return True
        now = time.monotonic()
        self._ping_tokens = min(float(self.max_pings), self._ping_tokens + (now - self._ping_refilled) * self.max_pings)
        self._ping_refilled = now
        if self._ping_tokens < 1.0:
            return False
        self._ping_tokens -= 1.0
        return True

    def _send_event(self, event: Event) -> None:
        with self._send_lock:
            if self._done.is_set():
                raise WebSocketClosed("websocket is closed")
            try:
                data = self._conn.send(event)
            except LocalProtocolError as exc:
                raise WebSocketClosed("websocket is closed") from exc
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Write bytes (send lock held), after the rest of a frame :meth:`WebSocket.offer` began: one
        plain ``send`` usually takes them all; a large answer goes in pieces, letting other greenlets
        run between them."""
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        if not data:
            return
        try:
            if len(data) <= WRITE_PIECE:
                sent = self._sock.send(data)
                if sent < len(data):
                    self._sock.sendall(data[sent:])
                return
            view = memoryview(data)
            for start in range(0, len(data), WRITE_PIECE):
                self._sock.sendall(view[start:start + WRITE_PIECE])
                _let_others_run()
        except OSError as exc:
            log.debug("websocket send failed: %s", exc)
            self._abort()
            raise WebSocketClosed(f"websocket send failed: {exc}") from exc

    def _send_quietly(self, event: Event) -> None:
        if self._release is None:
            self._send_quietly_now(event)
        elif not self._send_at_once(event):  # on the loop: a greenlet of its own waits for the socket
            threading.Thread(target=self._send_quietly_now, args=(event,), name="ws-control", daemon=True).start()

    def _send_at_once(self, event: Event) -> bool:
        """Send a control frame if the connection is free and nothing else waits to go; the end of it that
        the socket does not take goes from a greenlet of its own. False: nothing was done."""
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            if self._unsent or self._done.is_set():
                return self._done.is_set()
            try:
                data = self._conn.send(event)
                sent = self._write_nowait(data)
            except LocalProtocolError:
                return True
            except OSError as exc:
                log.debug("websocket send failed: %s", exc)
                self._abort()
                return True
            if sent < len(data):
                self._unsent = data[sent:]
                threading.Thread(target=self._flush_quietly, name="ws-control", daemon=True).start()
            return True
        finally:
            self._send_lock.release()

    def _flush_quietly(self) -> None:
        try:
            with self._send_lock:
                if not self._done.is_set():
                    self._write(b"")
        except WebSocketClosed:
            pass

    def _write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now, never waiting (a held connection's descriptor is non-blocking)."""
        if self._release is None:
            return _send_nowait(self._sock, data)
        try:
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def _send_quietly_now(self, event: Event) -> None:
        try:
            self._send_event(event)
        except WebSocketClosed:
            pass

    def _start_close(self, code: int, reason: str) -> None:
        # Once: held, the close frame may wait on a greenlet of its own behind a writer (the state
        # changes only once it is sent), and the keep-alive must not start it again at every round.
        if self._conn.state is ConnectionState.OPEN and not self._closing:
            self._closing = True
            self._close_deadline = time.monotonic() + self.close_timeout
            self._send_quietly(CloseConnection(code=code, reason=reason))

    def _fail(self, code: int, reason: str) -> None:
        """Close because of what the peer sent; the reader then drains until the answer."""
        log.debug("closing websocket: %s %s", code, reason)
        self._parts.clear()
        self._size = 0
        self._start_close(code, reason)

    def _drain(self) -> None:
        """Read (discarding messages) until the peer answers our close frame, or time runs out."""
        while not self._done.is_set():
            wait = self._close_deadline - time.monotonic()
            if wait <= 0:
                break
            self._read(wait)
        self._finish()

    def _read(self, timeout: float | None) -> bool:
        """Read once and process what came; False if nothing came within ``timeout``."""
        sock = self._sock
        try:
            pending = getattr(sock, "pending", None)
            if not (pending and pending()) and not _wait_readable(sock, timeout):
                return False
            data = sock.recv(RECV_BYTES)
        except (OSError, ValueError) as exc:
            log.debug("websocket receive failed: %s", exc)
            data = b""
        self._took(data)
        return True

    def _took(self, data: bytes) -> None:
        """Act on bytes read (``b""``: the peer closed)."""
        if self._done.is_set():
            return
        if self._conn.state is ConnectionState.CLOSED:
            self._finish()
            return
        now = time.monotonic()
        self._last_heard = now
        if self._partial_since is None:
            self._partial_since = now
        self._conn.receive_data(data or None)
        if self._process_events():
            self._partial_since = None  # something complete came; a trickle never gets here
        self._reads += 1
        if self._reads % READS_BEFORE_YIELD == 0:
            _let_others_run()  # a client that sends without pause must not pin the worker

    def _process_events(self) -> bool:
        """Act on the events of the data wsproto holds; True if a message, ping, pong or close
        was completed."""
        completed = False
        for count, event in enumerate(self._conn.events(), 1):
            if self._done.is_set():
                break
            if count % 256 == 0:
                _let_others_run()  # 64 KiB of tiny frames is thousands of events
            if isinstance(event, Message):
                self._on_message(event)
                completed = completed or bool(event.message_finished)
            elif isinstance(event, Ping):
                completed = True
                if self._conn.state is not ConnectionState.OPEN:
                    continue
                if not self._pings_allowed():
                    log.warning("closing a websocket: more than %s pings a second", self.max_pings)
                    self._fail(CLOSE_POLICY, "too many pings")
                    self._finish()  # no waiting for its answer behind the flood
                    break
                self._send_quietly(event.response())
            elif isinstance(event, Pong):
                completed = True
                self._pongs.append(bytes(event.payload))
                del self._pongs[:-16]
            elif isinstance(event, CloseConnection):
                completed = True
                self._on_close(event)
                break
        return completed

    def _on_message(self, event: Message[Any]) -> None:
        if self._conn.state is not ConnectionState.OPEN:
            return  # closing: the rest is discarded
        if isinstance(event, BytesMessage):
            self._fail(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported")
            return
        data = event.data
        self._size += len(data) if data.isascii() else len(data.encode("utf-8"))
        if self._size > self.max_message_size:
            self._fail(CLOSE_TOO_BIG, f"message larger than {self.max_message_size} bytes")
            return
        self._parts.append(data)
        if event.message_finished:
            self._messages.append("".join(self._parts))
            self._parts.clear()
            self._size = 0

    def _on_close(self, event: CloseConnection) -> None:
        if self.close_code is None:
            self.close_code = event.code
            self.close_reason = event.reason or ""
        state = self._conn.state
        if state is ConnectionState.REMOTE_CLOSING:
            self._send_quietly(event.response())
        elif state is ConnectionState.OPEN:
            # wsproto reports a protocol error as a close event: fail the connection.
            self._send_quietly(CloseConnection(code=event.code, reason=event.reason))
        self._finish()

    def _abort(self) -> None:
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        self._finish()

    def _finish(self) -> None:
        """Mark closed and shut the TCP connection down (which wakes any reader)."""
        if self._done.is_set():
            return
        self._done.set()
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        release, self._release = self._release, None
        if release is not None:
            release()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._owns_socket:
            self._sock.close()


def text_frame(text: str) -> bytes:
    """One complete server-to-client (unmasked) text frame.

    Server frames are the same bytes for every connection, so an event pushed to
    1,000 watchers is framed once and written 1,000 times (:meth:`WebSocket.send_frame`).
    """
    return utf8_frame(text.encode("utf-8"))


def utf8_frame(payload: bytes) -> bytes:
    """:func:`text_frame` of text already encoded (UTF-8)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class WebSocket(Endpoint):
    """The server side of one WebSocket connection; make it with :meth:`accept`.

    ``send`` may be called from any greenlet while another one is in ``receive``.
    Keep one greenlet receiving: that is what answers pings and close frames.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_message_size: int = MAX_MESSAGE_BYTES,
        send_timeout: float | None = SEND_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        environ: Mapping[str, Any] | None = None,
        owns_socket: bool = False,
    ):
        sock.settimeout(send_timeout)
        super().__init__(
            sock,
            Connection(ConnectionType.SERVER),
            max_message_size=max_message_size,
            close_timeout=close_timeout,
        )
        #: The WSGI environ of the handshake request.
        self.environ: Mapping[str, Any] = environ or {}
        self._owns_socket = owns_socket

    @classmethod
    def accept(
        cls,
        environ: Mapping[str, Any],
        *,
        max_message_size: int = MAX_MESSAGE_BYTES,
        send_timeout: float | None = SEND_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        take_over: bool = False,
    ) -> WebSocket:
        """Answer the handshake (``101``) on the request's raw socket.

        ``take_over`` (a gevent socket only): the WebSocket takes the connection from the server, which
        then ends its request at once without closing it (see :func:`websocket_response`'s ``hold``).
        Raises :class:`HandshakeError` (status 400, or 500 without a raw socket).
        The Origin is not checked here: use :func:`check_origin` first.
        """
        problem = handshake_problem(environ)
        if problem:
            raise HandshakeError(problem, status=400)
        sock = raw_socket(environ)
        if sock is None:
            raise HandshakeError("the server does not expose the raw socket", status=500)
        if take_over:
            sock = _taken_over(sock)
        accept = generate_accept_token(environ["HTTP_SEC_WEBSOCKET_KEY"].strip().encode("ascii"))
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        ws = cls(
            sock,
            max_message_size=max_message_size,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            environ={} if take_over else environ,  # (a held connection keeps nothing it need not)
            owns_socket=take_over,
        )
        try:
            sent = sock.send(response)  # (all of it, nearly always: gevent's sendall costs a system call more)
            if sent < len(response):
                sock.sendall(response[sent:])
        except OSError as exc:
            ws._abort()
            raise WebSocketClosed(f"handshake failed: {exc}") from exc
        return ws

    def send_frame(self, frame: bytes) -> None:
        """Send a frame made by :func:`text_frame` (or, with ``b""``, finish the one :meth:`offer`
        began); raises :class:`WebSocketClosed` when closed."""
        with self._send_lock:
            if self._done.is_set() or self._conn.state is not ConnectionState.OPEN:
                raise WebSocketClosed("websocket is closed")
            self._write(frame)

    def offer(self, frame: bytes) -> bool:
        """Send a frame made by :func:`text_frame` if that needs no waiting; True if it went.

        False (nothing written) when another sender holds the connection or the socket's buffer
        is full. When the socket takes only part of the frame, the rest is kept and written ahead
        of anything else: :attr:`unsent` tells, ``send_frame(b"")`` finishes it. Never blocks,
        so one publisher can offer a frame to thousands of connections in a row. Raises
        :class:`WebSocketClosed` when closed.
        """
        if self._release is not None:  # held, so under gevent: nothing else runs until this returns
            return not self._send_lock.locked() and self._offer(frame)
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            return self._offer(frame)
        finally:
            self._send_lock.release()

    def _offer(self, frame: bytes) -> bool:
        if self._done.is_set() or self._conn.state is not ConnectionState.OPEN:
            raise WebSocketClosed("websocket is closed")
        if self._unsent:
            return False
        try:
            sent = os.write(self._fd, frame) if self._release is not None else _send_nowait(self._sock, frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            log.debug("websocket send failed: %s", exc)
            self._abort()
            raise WebSocketClosed(f"websocket send failed: {exc}") from exc
        if sent and sent < len(frame):
            self._unsent = frame[sent:]
        return sent > 0

    @property
    def unsent(self) -> bool:
        """True while the end of an offered frame waits to be written (``send_frame(b"")``)."""
        return bool(self._unsent)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (the pong is read by whoever is in :meth:`receive`)."""
        self._send_event(Ping(payload=payload))


def _taken_over(sock: Any) -> Any:
    """A gevent socket of its own on the connection's descriptor; the server's is left closed (its
    ``close`` then does nothing)."""
    import gevent.socket

    family, kind, proto = sock.family, sock.type, sock.proto
    return gevent.socket.socket(family, kind, proto, fileno=sock.detach())


def raw_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client connection's socket: gunicorn's, else the Werkzeug dev server's."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def _json_error(
    start_response: StartResponse,
    status: str,
    message: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = json.dumps({"success": False, "error": message}).encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


def websocket_response(
    environ: dict[str, Any],
    start_response: StartResponse,
    handler: Handler,
    allowed_origins: list[str] | None = None,
    *,
    max_message_size: int = MAX_MESSAGE_BYTES,
    send_timeout: float | None = SEND_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    ping_interval: float | None = PING_INTERVAL,
    idle_timeout: float | None = IDLE_TIMEOUT,
    message_timeout: float | None = MESSAGE_TIMEOUT,
    max_pings: int | None = MAX_PINGS,
    hold: Handler | None = None,
) -> Iterable[bytes]:
    """Serve a WebSocket from a WSGI app: handshake, ``handler(ws)``, then release the connection.

    ``hold``: under gevent, instead of the handler, ``hold(ws)`` hands the connection to a loop that
    holds it (:class:`shmooze.http.wsloop.SocketLoop`) and returns; the request ends at once and the
    connection lives on, a loop's entry rather than a greenlet.

    While the handler receives, the server pings every ``ping_interval`` seconds and closes
    (1001) a connection it heard nothing from for ``idle_timeout``, closes (1008) one whose
    message takes longer than ``message_timeout`` or that sends more than ``max_pings`` pings
    a second; each with a log line.

    Answers 400 (bad handshake) or 403 (Origin refused by :func:`check_origin`)
    with ``{"success": false, "error": ...}``. After the handler returns the
    WebSocket is closed (1000, or 1011 if it raised) and the result of
    :func:`finish_request` is returned; return it from the app unchanged.
    """
    problem = handshake_problem(environ)
    if problem:
        return _json_error(
            start_response, "400 Bad Request", problem, [("Sec-WebSocket-Version", "13")]
        )
    if not check_origin(environ, allowed_origins):
        log.info("websocket refused: origin %r not allowed", environ.get("HTTP_ORIGIN"))
        return _json_error(start_response, "403 Forbidden", "origin not allowed")
    if raw_socket(environ) is None:
        return _json_error(
            start_response, "500 Internal Server Error", "websockets need gunicorn or werkzeug"
        )
    sock = raw_socket(environ)
    # Held: a plain gevent socket (a loop reads and writes its descriptor itself: not through TLS).
    held = hold is not None and green_library(sock) == "gevent" and not hasattr(sock, "do_handshake")
    try:
        ws = WebSocket.accept(
            environ,
            max_message_size=max_message_size,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            take_over=held,
        )
    except WebSocketClosed as exc:
        log.debug("websocket handshake dropped: %s", exc)
        return finish_request(environ)
    ws.keep_alive(ping_interval, idle_timeout, message_timeout, max_pings)
    try:
        if held and hold is not None:
            hold(ws)
        else:
            handler(ws)
    except Exception:
        log.exception("websocket handler failed (%s)", environ.get("PATH_INFO"))
        ws.close(CLOSE_INTERNAL_ERROR, "internal error")
    finally:
        if not held:
            ws.close()
    from shmooze.http.jsonapp import close_connection

    close_connection(start_response)  # what the peer sent after its last frame is not a request
    return finish_request(environ)
