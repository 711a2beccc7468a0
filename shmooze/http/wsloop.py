"""One loop that holds a gevent worker's idle WebSockets: an entry of one ``epoll`` each, not a greenlet.

A WebSocket served the plain way holds a greenlet (and a gunicorn request) for its whole life, blocked
in ``receive``: at 10,000 watchers that is most of a gateway worker's memory (a greenlet keeps its own
stack of Python frames) and 10,000 timers waking for the keep-alive. A held connection is instead one
descriptor in the loop's ``epoll`` and one entry in a dict. The loop's greenlet waits for the ``epoll``
to be readable (one gevent watcher for all), reads what each ready connection sent (never waiting:
:meth:`~shmooze.http.websocket.Endpoint.read_ready`), answers pings and close frames, and hands a connection
with whole messages to its owner (:class:`Owner`), which takes it out of the loop while a greenlet of
its own serves them and gives it back with :meth:`SocketLoop.resume`. One round every few seconds
pings, closes the silent and ends late close handshakes, for all.

Only under gevent (a gateway worker); elsewhere a WebSocket keeps its thread.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any, Protocol

from shmooze.http.websocket import CLOSE_INTERNAL_ERROR, WebSocket

log = logging.getLogger(__name__)

#: The most seconds between keep-alive rounds over every held connection (each connection says how
#: soon it needs the next: a quarter of its shortest keep-alive time).
MAX_TICK = 5.0
#: Ready connections taken from ``epoll`` at once.
MAX_READY = 1024


class Owner(Protocol):
    """Who serves a held connection's messages."""

    def messages_waiting(self) -> None:
        """On the loop: whole messages wait (:meth:`~shmooze.http.websocket.Endpoint.next_message`);
        the connection is out of the loop until :meth:`SocketLoop.resume`. Must not block."""

    def ended(self) -> None:
        """The connection is over (called once, on whichever greenlet ended it). Must not block."""


class SocketLoop:
    """The held WebSockets of one process (see the module's docstring); make it with :func:`socket_loop`."""

    def __init__(self) -> None:
        from gevent import monkey

        self._epoll = monkey.get_original("select", "epoll")()
        self._held: dict[int, tuple[WebSocket, Owner]] = {}  # fd -> connection, in the loop or out with its owner
        self._polled: set[int] = set()  # the descriptors in the epoll now
        self._runner: Any = None
        self._next_tick = time.monotonic() + MAX_TICK  # the next keep-alive round

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, ws: WebSocket, owner: Owner) -> None:
        """Hold ``ws`` (its socket now non-blocking, owned by it) until it ends."""
        fd = ws.fileno()
        stale = self._held.get(fd)
        if stale is not None:  # (a connection on this descriptor number ended without being released)
            log.warning("a held WebSocket's descriptor was reused before it was released")
            self._forget(fd)
        self._held[fd] = (ws, owner)
        ws.hold(lambda: self._release(fd))
        self._next_tick = min(self._next_tick, time.monotonic() + ws.keep_alive_tick())
        self.resume(ws)
        if self._runner is None:
            import gevent

            self._runner = gevent.spawn(self._run)

    def resume(self, ws: WebSocket) -> None:
        """Read ``ws`` again in the loop (its owner has served the messages that waited)."""
        fd = ws.fileno()
        if fd in self._held and fd not in self._polled:  # (a connection that ended has left _held)
            self._polled.add(fd)
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def _release(self, fd: int) -> None:
        """``ws`` ended: out of the loop before its descriptor is closed (and reused)."""
        entry = self._forget(fd)
        if entry is not None:
            threading.Thread(target=entry[1].ended, name="ws-ended", daemon=True).start()

    def _forget(self, fd: int) -> tuple[WebSocket, Owner] | None:
        if fd in self._polled:
            self._polled.discard(fd)
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        return self._held.pop(fd, None)

    def _pause(self, fd: int) -> None:
        self._polled.discard(fd)
        self._epoll.unregister(fd)

    def _run(self) -> None:
        from gevent.socket import wait_read

        epoll_fd = self._epoll.fileno()
        while True:
            try:  # (a second at most: a connection held meanwhile may want its round sooner)
                wait_read(epoll_fd, timeout=min(1.0, max(0.0, self._next_tick - time.monotonic())))
            except OSError:  # (gevent's timeout is a socket.timeout)
                pass
            for fd, _events in self._epoll.poll(0, MAX_READY):
                entry = self._held.get(fd)
                if entry is None or fd not in self._polled:
                    continue
                ws, owner = entry
                try:
                    ws.read_ready(fd)
                    if fd in self._polled and ws.next_message_waiting():
                        self._pause(fd)
                        owner.messages_waiting()
                except Exception:  # one connection's fault must not stop the loop of all
                    log.exception("a held WebSocket failed; dropping it")
                    ws.drop(CLOSE_INTERNAL_ERROR, "internal error")
            if time.monotonic() >= self._next_tick:
                tick = MAX_TICK
                for ws, _owner in list(self._held.values()):
                    try:
                        tick = min(tick, ws.keep_alive_tick())
                    except Exception:
                        log.exception("a held WebSocket failed; dropping it")
                        ws.drop(CLOSE_INTERNAL_ERROR, "internal error")
                self._next_tick = time.monotonic() + tick


_LOOP: SocketLoop | None = None


def socket_loop() -> SocketLoop:
    """This process's loop (made at first use: after gunicorn forked the worker)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = SocketLoop()
    return _LOOP


def wait_closed(timeout: float) -> None:
    """Wait (up to ``timeout`` seconds) until this process holds no WebSocket: a stopping worker lets
    the held ones finish their close handshake ("going away") before it exits, as it waits for requests."""
    if _LOOP is None:
        return
    import gevent

    deadline = time.monotonic() + timeout
    while len(_LOOP) and time.monotonic() < deadline:
        gevent.sleep(0.05)
