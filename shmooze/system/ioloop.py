"""One I/O thread for every module of a service.

It reads the update streams (and the modules' stdout and stderr, and the pidfds
that say a module process ended) with one selector, so a service holding 500
modules runs one thread for them, not 500. Writes it owes a peer are buffered and
sent when the peer reads; a peer that never reads only loses answers beyond a
bound, it never stalls the loop.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import select
import selectors
import socket
import threading
import time
from typing import Any, Callable

from shmooze.system.cooperative import native_poll

log = logging.getLogger(__name__)

Callback = Callable[[], None]


class Channel:
    """A registered file descriptor with a reader callback and an output buffer (made when a write
    cannot be sent at once: a service watches five of these per module)."""

    __slots__ = ("fileobj", "on_readable", "out", "max_out", "dropped")

    def __init__(self, fileobj: Any, on_readable: Callable[[], None], max_out: int):
        self.fileobj = fileobj
        self.on_readable = on_readable
        self.out: bytearray | None = None  # bytes waiting for the peer to read
        self.max_out = max_out
        self.dropped = 0


class IOLoop:
    """A selector loop in a daemon thread; other threads talk to it through :meth:`call_soon`."""

    def __init__(self, name: str = "shmooze-io"):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: list[Callback] = []
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Callback]] = []
        self._seq = itertools.count()
        self._channels: dict[int, Channel] = {}
        #: What the loop's readers read into (on the loop thread only), copying out what came: a read
        #: of 64 KiB into a new bytes object each time scattered the malloc heap (cut to size after).
        self.read_buffer = memoryview(bytearray(65536))
        self._fds: dict[int, int] = {}  # id(fileobj) -> fd, of every watched object (found even once closed)
        self._running = True
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- called from any thread ----------------------------------------------------

    def call_soon(self, fn: Callback) -> None:
        with self._lock:
            self._calls.append(fn)
            if len(self._calls) > 1:  # a wake-up is on its way already (the loop takes the calls after it)
                return
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or closing

    def call_later(self, delay: float, fn: Callback) -> None:
        when = time.monotonic() + delay
        self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._seq), fn)))

    def stop(self) -> None:
        def halt() -> None:
            self._running = False

        self.call_soon(halt)
        if threading.current_thread() is not self.thread:
            self.thread.join(5)

    # -- called on the loop thread -------------------------------------------------

    def add_reader(self, fileobj: Any, on_readable: Callable[[], None], max_out: int = 1 << 20) -> Channel:
        chan = Channel(fileobj, on_readable, max_out)
        fd = fileobj.fileno()
        self._selector.register(fileobj, selectors.EVENT_READ, chan)
        self._channels[fd] = chan
        self._fds[id(fileobj)] = fd
        return chan

    def remove(self, fileobj: Any) -> None:
        """Stop watching ``fileobj`` (and drop its channel); nothing happens if it is not watched.

        Found by its fd, or (once closed) by the object itself, without scanning every watched fd:
        a service stopping hundreds of modules removes a few of them per module."""
        fd = self._fds.pop(id(fileobj), None)
        if fd is None:  # not this object: maybe another object for the same fd (a raw fd's wrapper)
            try:
                fd = fileobj.fileno()
            except (OSError, ValueError):
                return  # closed, and never watched
            chan = self._channels.get(fd)
            if chan is None:
                return
            self._fds.pop(id(chan.fileobj), None)
        chan = self._channels.pop(fd, None)
        if chan is not None:
            # Its reader is most often a method of what holds the channel (a module's handle): that cycle
            # would keep the handle, its process, streams and buffers, until a full collection of the oldest
            # generation, which a busy service runs seldom (the served pool grew by about 4 KiB per module
            # added and removed, round after round).
            chan.on_readable = _unwatched
        with contextlib.suppress(KeyError, ValueError, OSError):  # not registered, or closed already
            self._selector.unregister(fd)

    def write(self, chan: Channel, data: bytes) -> None:
        """Send bytes on a socket channel, queueing what the peer does not take now; drop them when the
        peer lets the queue grow past its bound."""
        if len(chan.out or b"") + len(data) > chan.max_out:
            chan.dropped += 1
            return
        if chan.out is None:  # nothing queued: send at once, queue only what is left
            try:
                sent = chan.fileobj.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return
            if sent == len(data):
                return
            chan.out = bytearray(data[sent:])
        else:
            chan.out += data
        self._flush(chan)

    def _flush(self, chan: Channel) -> None:
        sock, out = chan.fileobj, chan.out
        while out:
            try:
                sent = sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                out.clear()
                break
            del out[:sent]
        if not out:
            chan.out = None
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if chan.out else 0)
        try:
            self._selector.modify(sock, events, chan)
        except (KeyError, ValueError, OSError):
            pass

    def _run(self) -> None:
        while self._running:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                ready = self._selector.select(timeout)
            except OSError as exc:  # pragma: no cover - closed fd raced with select
                if exc.errno != errno.EBADF:
                    log.exception("selector failed")
                continue
            self._dispatch(ready)
            ready = []
            self._run_due()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _dispatch(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Serve the ready channels (and drain the wake-up socket)."""
        for key, events in ready:
            chan = key.data
            if chan is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            if events & selectors.EVENT_WRITE:
                self._flush(chan)
            if events & selectors.EVENT_READ:
                self._guard(chan.on_readable)

    def _run_due(self) -> None:
        """Run the calls handed over and the timers due. (A method of its own: what they hold, a stopped
        module's handle for one, is let go on return, not kept by the loop's locals while it waits.)"""
        with self._lock:
            calls, self._calls = self._calls, []
        for fn in calls:
            self._guard(fn)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._guard(fn)

    @staticmethod
    def _guard(fn: Callback) -> None:
        try:
            fn()
        except Exception:
            log.exception("error in I/O callback")


def _unwatched() -> None:
    """The reader of a channel no longer watched."""


def wait_readable(objs: list[Any], timeout: float) -> list[Any]:
    """The objects (sockets, files or raw fds) readable within ``timeout`` seconds.

    Like ``select.select`` for reading, but with ``poll``: a service holding a few hundred
    modules has descriptors above FD_SETSIZE (1024), which ``select`` refuses. With ``timeout``
    0 it only looks, on the real ``poll`` even where gevent patched it: it never switches greenlets.
    """
    poller = native_poll() if timeout <= 0 else select.poll()
    by_fd: dict[int, Any] = {}
    for obj in objs:
        fd = obj if isinstance(obj, int) else obj.fileno()
        by_fd[fd] = obj
        poller.register(fd, select.POLLIN | select.POLLPRI)
    events = poller.poll(max(0, int(timeout * 1000 + 0.999)))
    return [by_fd[fd] for fd, _ in events if fd in by_fd]




def pidfd(pid: int) -> int | None:
    """A pidfd for a child (readable when it exits), or None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
