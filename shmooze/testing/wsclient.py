"""A small blocking WebSocket client, to test an application's WebSocket endpoint.

It shares the server side's framing, ping/pong and close handshake (``shmooze.http.websocket.Endpoint``);
wsproto does the client's handshake.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Event, Ping, RejectConnection, RejectData, Request

from shmooze.http.websocket import DEFAULT_PORTS, MAX_MESSAGE_BYTES, RECV_BYTES, Endpoint, HandshakeError


class WebSocketClient(Endpoint):
    """A small blocking client: connect, then the server side's ``send``, ``receive``, ``close``."""

    _owns_socket = True

    def __init__(self, sock: socket.socket, conn: Connection, **options: Any):
        super().__init__(sock, conn, **options)
        self._process_events()  # frames that came with the 101

    @property
    def sock(self) -> socket.socket:
        """The connection's socket (as ``http.client.HTTPConnection.sock``)."""
        return self._sock

    # What a misbehaving client does, to test how a server copes with it.

    def send_event(self, event: Event) -> None:
        """Send any wsproto event as it is: a ping without waiting for its pong, the first part of a
        message (``TextMessage(..., message_finished=False)``) never followed by the rest."""
        self._send_event(event)

    def frame(self, event: Event) -> bytes:
        """The bytes of an event's frame, unsent: a test writes them to :attr:`sock` itself (a burst
        of pings in one write)."""
        return self._conn.send(event)

    def pump(self, timeout: float | None = 0.0) -> bool:
        """Read what has arrived (pongs noted, pings answered, messages queued for :meth:`receive`);
        False when the connection closed or nothing came within ``timeout`` seconds."""
        with self._recv_lock:
            return self._read(timeout)

    @classmethod
    def connect(
        cls,
        url: str,
        origin: str | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        max_message_size: int = MAX_MESSAGE_BYTES,
    ) -> WebSocketClient:
        """Open ``ws://``/``wss://`` (or ``http(s)://``) ``url``; raises :class:`HandshakeError`.

        ``timeout`` bounds the connect, the handshake and each send.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"not a websocket url: {url!r}")
        secure = scheme in ("wss", "https")
        host = parts.hostname or "localhost"
        port = parts.port or DEFAULT_PORTS[scheme]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        if origin is not None:
            extra.append((b"Origin", origin.encode("latin-1")))

        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            ws = WSConnection(ConnectionType.CLIENT)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            sock.sendall(ws.send(Request(host=netloc, target=target, extra_headers=extra)))
            conn = cls._handshake(sock, ws)
        except BaseException:
            sock.close()
            raise
        return cls(sock, conn, max_message_size=max_message_size)

    @staticmethod
    def _handshake(sock: socket.socket, ws: WSConnection) -> Connection:
        status: int | None = None
        body = bytearray()
        while True:
            data = sock.recv(RECV_BYTES)
            if not data:
                raise HandshakeError("connection closed during the handshake", status, bytes(body))
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    assert ws.connection is not None
                    return ws.connection  # frames after the 101 stay buffered in it
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeError(f"handshake rejected with {status}", status)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        text = bytes(body).decode("utf-8", "replace")
                        raise HandshakeError(
                            f"handshake rejected with {status}: {text}", status, bytes(body)
                        )

    def ping(self, payload: bytes = b"", timeout: float | None = 10.0) -> bool:
        """Send a ping and wait for its pong (messages read meanwhile stay queued)."""
        payload = bytes(payload)
        self._send_event(Ping(payload=payload))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._recv_lock:
            while payload not in self._pongs:
                if self.closed:
                    return False
                if not self._read(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    return False
            self._pongs.remove(payload)
        return True

    def __enter__(self) -> WebSocketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
