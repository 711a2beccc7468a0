"""Fan-out: one long poll per watched service per gateway worker, its events to every subscriber.

Each gateway worker long-polls every watched service once (its ``changes`` command) and
fans each batch of events out to all its subscribers, so 1,000 browsers cost one poll per
service, not 1,000. An event is framed once and offered to each connection in turn: it goes
straight out when the connection has nothing waiting and its socket takes it. Only then does
a connection get an outbox (bounded in messages and bytes) and a writer of its own, until it
has caught up; so one slow browser never delays the others, and an idle watcher costs no
writer. One that falls too far behind is dropped (its page reconnects and reloads).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

from shmooze import protocol
from shmooze.http import metrics
from shmooze.http.forward import ForwardError, ServiceProxy, Stream
from shmooze.http.websocket import CLOSE_POLICY, WebSocket, WebSocketClosed, text_frame, utf8_frame
from shmooze.registry import Declared

log = logging.getLogger(__name__)

POLL_TIMEOUT = 20.0  # seconds a long poll waits at the service
#: Seconds before a watcher that could not reach its service tries again, doubled up to ``RETRY_MAX``:
#: a refused connection costs microseconds, so a restarted service is heard again within a second.
RETRY_FIRST = 0.05
RETRY_MAX = 0.5
OUTBOX_LIMIT = 500  # messages a slow browser may be behind before it is dropped
OUTBOX_BYTES = Declared.ws_outbox_bytes.default  # ... or bytes


class Listener(Protocol):
    """What a watcher publishes to: a connection's :class:`Subscriber`, or a waiting long poll."""

    def push(self, frame: bytes) -> None: ...


class Subscriber:
    """One WebSocket connection's side of the fan-out: frames go straight out when they can,
    else into an outbox that a writer (a thread, a greenlet under gevent) drains while it is
    not empty.

    The outbox holds at most ``OUTBOX_LIMIT`` frames and ``max_bytes`` bytes (one frame larger
    than that still goes when the outbox is empty). Past either, the connection is dropped, on a
    greenlet of its own: whoever pushed (the publisher, fanning out to everyone) never waits.
    """

    def __init__(self, ws: WebSocket, max_bytes: int = OUTBOX_BYTES):
        self.ws = ws
        self.max_bytes = max_bytes
        self._outbox: list[bytes] = []  # (a list: an empty deque is 600 bytes, times every idle watcher)
        self._bytes = 0
        self._writing = False  # a writer owns the connection until the outbox is empty
        self._lock = threading.Lock()
        self.dropped = False

    def push(self, frame: bytes) -> None:
        if self.dropped:
            return
        if not self._writing and self.ws.held:
            # Held by a loop, so under gevent: nothing else runs until this returns, and nothing here
            # waits; the lock is for threads. The usual case, a frame the socket takes at once.
            try:
                went = self.ws.offer(frame)
            except WebSocketClosed:
                self.dropped = True
                return
            if went and not self.ws.unsent:
                return
            with self._lock:
                if not went:
                    self._queue(frame)
                self._writing = True
            threading.Thread(target=self._write_loop, name="ws-writer", daemon=True).start()
            return
        with self._lock:
            direct = not self._writing
            if direct:
                self._writing = True  # held while offering, so frames keep their order
            elif len(self._outbox) >= OUTBOX_LIMIT or (self._bytes and self._bytes + len(frame) > self.max_bytes):
                self._drop_behind()
                return
            else:
                self._queue(frame)
                return
        try:
            went = self.ws.offer(frame)
        except WebSocketClosed:
            went = True  # nothing more goes; the reader sees the connection closed
            self.dropped = True
        with self._lock:
            if went and not self.ws.unsent:
                if not self._outbox:
                    self._writing = False
                    return
            elif not went:
                self._outbox.insert(0, frame)  # ahead of what others queued meanwhile
                self._bytes += len(frame)
        threading.Thread(target=self._write_loop, name="ws-writer", daemon=True).start()

    def _queue(self, frame: bytes) -> None:
        self._outbox.append(frame)
        self._bytes += len(frame)

    def _drop_behind(self) -> None:
        """Drop a connection that fell behind (lock held); the closing runs on its own greenlet."""
        behind = (len(self._outbox), self._bytes)
        self.dropped = True
        self._outbox.clear()
        self._bytes = 0
        log.warning("a WebSocket client fell behind (%d messages, %d bytes unread); dropping it", *behind)
        threading.Thread(target=self.ws.drop, args=(CLOSE_POLICY, "too slow"), name="ws-drop", daemon=True).start()

    def _write_loop(self) -> None:
        """Finish the frame the socket took part of, then the outbox, waiting on the socket as needed."""
        frame = b""
        while True:
            try:
                self.ws.send_frame(frame)
            except WebSocketClosed:
                self.dropped = True
            with self._lock:
                if self.dropped or not self._outbox:
                    self._outbox.clear()
                    self._bytes = 0
                    self._writing = False
                    return
                frame = self._outbox.pop(0)
                self._bytes -= len(frame)

    def stop(self) -> None:
        """The connection is over: nothing more is sent."""
        self.dropped = True


class ServiceWatcher:
    """Long-polls one service's change events while anyone subscribes, and fans them out."""

    def __init__(self, proxy: ServiceProxy):
        self.proxy = proxy
        self.version: int | None = None
        self._listeners: set[Listener] = set()
        self._subscribers = 0  # of the listeners, WebSockets (the others are long polls waiting)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._nudged = threading.Event()  # ends the wait before the next try (see nudge)
        self._asking: _Question | None = None  # the question under way (see nudge)

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.add(listener)
                self._subscribers += isinstance(listener, Subscriber)
            if self._thread is None:
                metrics.gateway_stats().watchers.inc()
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name=f"watch-{self.proxy.name}", daemon=True)
                self._thread.start()

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.discard(listener)
                self._subscribers -= isinstance(listener, Subscriber)

    def nudge(self) -> None:
        """Ask the service again at once (its address changed, or it is known to be back): the pause
        after a failure ends, and a question under way is left unanswered (its thread ends on its own)."""
        self._nudged.set()
        question = self._asking
        if question is not None:
            question.abandon()

    def current_version(self, timeout: float = 5.0) -> int | None:
        self._ready.wait(timeout)
        return self.version

    def changes(self, since: int, timeout: float) -> dict[str, Any]:
        """The service's answer to ``changes`` (``version``, ``events``, ``reset``?)."""
        body = protocol.dumps({"cmd": "changes", "args": {"since": since, "timeout": timeout}})
        reply = self.proxy.post(body)
        answer = json.loads(reply.body)
        ok, value = protocol.parse_answer(answer)
        if not ok:
            raise ForwardError(502, f"changes failed: {value}")
        return value

    def _run(self) -> None:
        retry = 0.0
        while True:
            with self._lock:
                if not self._listeners:
                    metrics.gateway_stats().watchers.dec()
                    self._thread = None
                    self.version = None  # learnt afresh when someone subscribes again
                    return
            try:
                if self.version is None:
                    self.version = self._ask(0, 0)["version"]
                    self._ready.set()
                    continue
                answer = self._follow(retry)
                retry = 0.0
                if answer is None:  # the stream ended while nobody listened, or was cut: ask again
                    continue
                result = answer  # the service answered as a long poll
            except _Abandoned:
                self._nudged.clear()
                continue
            except (ForwardError, ValueError, KeyError, TypeError) as exc:
                if not retry:  # (one line per outage, not one per try)
                    log.info("watching %s: %s", self.proxy.name, exc)
                self._ready.set()
                metrics.gateway_stats().watch_retries.inc()
                retry = min(RETRY_MAX, retry * 2 or RETRY_FIRST)
                if self._nudged.wait(retry):
                    self._nudged.clear()
                    retry = RETRY_FIRST
                continue
            if result.get("events") or result.get("reset"):
                self.publish(result)
            self.version = result["version"]

    def _follow(self, retry: float) -> dict[str, Any] | None:
        """Follow the service's kept stream of changes from :attr:`version` (see
        :mod:`shmooze.http.changestream`), publishing each batch, until nobody listens (None), or return
        its answer when it answered as a long poll instead (a server that keeps no stream)."""
        self._nudged.clear()
        # The service answers a poll with nothing new well before the forward timeout cuts it.
        body = protocol.dumps({"cmd": "changes", "args": {"since": self.version, "stream": True,
                                                          "timeout": min(POLL_TIMEOUT, self.proxy.timeout / 2)}})
        opened = self.proxy.stream(body)
        if retry:
            log.info("watching %s: the service answers again", self.proxy.name)
        if not isinstance(opened, Stream):
            ok, value = protocol.parse_answer(json.loads(opened.body))
            if not ok:
                raise ForwardError(502, f"changes failed: {value}")
            return value
        prefix = b'{"event":"change","service":' + json.dumps(self.proxy.name).encode() + b","
        try:
            while self._listeners:
                line = opened.next_line()
                if not line:  # (the service is there; nothing happened)
                    continue
                result = json.loads(line)
                if not isinstance(result, dict) or not isinstance(result.get("version"), int):
                    raise ForwardError(502, "the service's change stream sent a line that is not an answer")
                if result.get("events") or result.get("reset"):
                    # framed as it came: the line is the message's tail (no second encoding)
                    self._publish_frame(utf8_frame(prefix + line[line.index(b"{") + 1:]))
                self.version = result["version"]
        finally:
            opened.close()
        return None

    def _ask(self, since: int, timeout: float) -> dict[str, Any]:
        """:meth:`changes`, on a thread of its own that :meth:`nudge` can leave behind."""
        self._nudged.clear()
        question = self._asking = _Question(self, since, timeout)
        try:
            return question.answer()
        finally:
            self._asking = None

    def publish(self, result: dict[str, Any]) -> None:
        self._publish_frame(text_frame(change_message(self.proxy.name, result)))  # framed once for everyone

    def _publish_frame(self, message: bytes) -> None:
        with self._lock:
            listeners = list(self._listeners)
            subscribers = self._subscribers
        for listener in listeners:
            listener.push(message)
        metrics.gateway_stats().events.inc(subscribers)


class _Abandoned(Exception):
    """The question was left unanswered (see :meth:`ServiceWatcher.nudge`)."""


class _Question:
    """One ``changes`` asked on a thread (a greenlet, in a gateway worker) of its own."""

    def __init__(self, watcher: ServiceWatcher, since: int, timeout: float):
        self._done = threading.Event()
        self._abandoned = False
        self._result: dict[str, Any] | None = None
        self._error: Exception | None = None
        threading.Thread(target=self._ask, args=(watcher, since, timeout), name=f"ask-{watcher.proxy.name}",
                         daemon=True).start()

    def _ask(self, watcher: ServiceWatcher, since: int, timeout: float) -> None:
        try:
            self._result = watcher.changes(since, timeout)
        except Exception as exc:  # noqa: BLE001 - handed to the watcher, which tells what it takes
            self._error = exc
        finally:
            self._done.set()

    def abandon(self) -> None:
        self._abandoned = True
        self._done.set()

    def answer(self) -> dict[str, Any]:
        """The service's answer (or what went wrong), once it came or the question was abandoned."""
        self._done.wait()
        if self._abandoned:
            raise _Abandoned()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def change_message(service: str, result: dict[str, Any]) -> str:
    """The message that tells a browser about a batch of change events."""
    out: dict[str, Any] = {"event": "change", "service": service, "version": result["version"],
                           "events": result.get("events", [])}
    if result.get("reset"):
        out["reset"] = True
    return _ENCODER.encode(out)


#: Made once (``json.dumps`` with options makes an encoder at every call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))

