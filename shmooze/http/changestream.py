"""A service's change events as a kept stream: one line of JSON per batch, written by the publishing thread.

A gateway that watches a service asks ``changes`` with ``"stream": true``. On a gunicorn worker the answer
is a head (proven with the service key like any answer: the connection is then known to reach the
service) and, from then on, one line per batch of events, as ``changes`` would answer it
(``{"version", "events", "reset"?}``), until either side closes. The line is written by the thread
that published the batch, without waiting (``MSG_DONTWAIT``), so an event costs no thread hand-over,
no request and no answer's head: the long poll it replaces woke a pool thread, answered, and was
asked again after every batch. What the socket does not take at once waits (at most
``MAX_PENDING`` bytes) for the request's own thread, which meanwhile watches the connection: a
gateway that falls further behind is cut and catches up by asking again ``since`` its last version.
An empty line every ``KEEPALIVE`` seconds tells the gateway the service is there.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Callable

from shmooze.events import ChangeLog

log = logging.getLogger(__name__)

#: Seconds between empty lines on an idle stream (the gateway's read timeout is longer).
KEEPALIVE = 10.0
#: Bytes a stream may have waiting for its socket before it is cut.
MAX_PENDING = 1 << 20
#: How often the request's thread looks at the stream while nothing waits to be sent.
LOOK_EVERY = 1.0
#: ... and while something waits.
FLUSH_EVERY = 0.02

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
        b"Connection: close\r\n")


class Stream:
    """One kept stream of a change log to one connection."""

    def __init__(self, sock: socket.socket, events: ChangeLog):
        self.sock = sock
        self.events = events
        self._pending = bytearray()
        self._lock = threading.Lock()
        self.ended = False
        self._held = True  # until the head is sent: lines published meanwhile wait behind it
        self._last_write = time.monotonic()

    def deliver(self, line: bytes) -> None:
        """Send ``line`` now, or keep what the socket would not take (on the publishing thread: never blocks)."""
        with self._lock:
            if self.ended:
                return
            if not self._pending and not self._held:
                try:
                    line = line[self.sock.send(line, socket.MSG_DONTWAIT):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.ended = True
                    return
            if line:
                if len(self._pending) + len(line) > MAX_PENDING:
                    log.info("a change stream fell %d bytes behind: cut (its reader asks again)", len(self._pending))
                    self.ended = True
                    return
                self._pending += line
            self._last_write = time.monotonic()

    def serve(self, head: bytes, first: bytes) -> None:
        """On the request's thread: send the head and the first line, then keep the stream until it ends."""
        self.sock.setblocking(True)
        try:
            with self._lock:
                self.sock.sendall(head + first + self._pending)
                self._pending.clear()
                self._held = False
            while not self.ended and not self.events.closed:
                waiting = bool(self._pending)
                readable, writable, _ = select.select([self.sock], [self.sock] if waiting else [], [],
                                                      FLUSH_EVERY if waiting else LOOK_EVERY)
                if readable:  # the reader sends nothing: this is its end (or a protocol error)
                    return
                if writable:
                    self._flush()
                elif time.monotonic() - self._last_write >= KEEPALIVE:
                    self.deliver(b"\n")
        finally:
            with self._lock:
                self.ended = True
            self.events.unfollow(self.deliver)

    def _flush(self) -> None:
        with self._lock:
            try:
                sent = self.sock.send(self._pending, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.ended = True
                return
            del self._pending[:sent]


def serve_stream(sock: socket.socket, events: ChangeLog, since: int, proof: Callable[[], tuple[str, str] | None]) -> None:
    """Answer a ``changes`` request with ``stream`` on ``sock`` (the connection's raw socket) until the stream
    ends; the server then closes the connection. ``proof()``: the proof header of the (empty) head."""
    stream = Stream(sock, events)
    first = events.follow(since, stream.deliver)
    extra = proof()
    head = HEAD + (f"{extra[0]}: {extra[1]}\r\n".encode("latin-1") if extra else b"") + b"\r\n"
    try:
        stream.serve(head, first)
    except OSError as exc:
        log.debug("change stream ended: %s", exc)
