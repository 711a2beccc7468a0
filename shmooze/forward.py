"""The gateway's forwarding hop: keep-alive HTTP connections to one local service.

``http.client`` with a small pool of kept-alive connections costs a fraction of
a ``requests`` hop (see bench/). Under gunicorn's gevent worker the sockets are
cooperative, so each waiting request holds a connection, not a thread.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass


class ForwardError(Exception):
    """The service could not be reached or did not answer; ``status`` is 502 or 504."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str


class ServiceProxy:
    """Posts bodies to ``http://host:port/`` over pooled keep-alive connections."""

    def __init__(self, name: str, host: str, port: int, timeout: float = 30.0, connect_timeout: float = 2.0,
                 max_idle: int = 64):
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        return conn, False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, body: bytes, content_type: str = "application/json", path: str = "/",
             headers: dict[str, str] | None = None) -> Reply:
        """Send one command body; retry once when a kept-alive connection was closed by the service."""
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                if conn.sock is None:
                    conn.connect()
                conn.sock.settimeout(self.timeout)
                conn.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionRefusedError, FileNotFoundError):
                conn.close()
                raise ForwardError(502, f"service {self.name!r} is down (nothing listens on port {self.port})")
            except (socket.timeout, TimeoutError):
                conn.close()
                raise ForwardError(504, f"service {self.name!r} did not answer within {self.timeout:g} s")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.BadStatusLine) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the service closed an idle kept-alive connection: the request never arrived
                raise ForwardError(502, f"service {self.name!r} closed the connection: {exc or type(exc).__name__}")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ForwardError(502, f"service {self.name!r} failed: {exc}")
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return Reply(resp.status, data, resp.getheader("Content-Type", "application/json"))
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
