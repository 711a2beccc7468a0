"""Push: change events and commands over the gateway's WebSocket.

Messages from the browser (JSON text, ``id`` echoed in the answer):

* ``{"id": 1, "service": "queue", "cmd": "add", "args": {...}}`` -> ``{"id": 1, "success": ..., ...}``
* ``{"id": 2, "service": "queue", "batch": [{...}, ...]}`` -> ``{"id": 2, "answers": [...]}``
* ``{"id": 3, "subscribe": {"queue": VERSION_OR_NULL, ...}}`` -> ``{"id": 3, "success": true,
  "result": {"queue": {"version": V}}}``; then events are pushed as
  ``{"event": "change", "service": "queue", "version": V, "events": [...], "reset"?: true}``
* ``{"id": 4, "unsubscribe": ["queue"]}``

Each gateway worker long-polls every watched service once (its ``changes`` command)
and fans each batch of events out to all its subscribers, so 1,000 browsers cost
one poll per service, not 1,000. Each connection has its own outbox (bounded in
messages and bytes) and writer, so one slow browser never delays the others; one
that falls too far behind is dropped on its own greenlet (its page reconnects and
reloads). Messages on one connection run concurrently, each answer carrying its
``id``; messages with the same ``id`` are answered in the order they came.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from typing import Any, Callable

from shmooze import metrics, protocol
from shmooze.forward import ForwardError, ServiceProxy
from shmooze.service import only_reads
from shmooze.websocket import text_frame

log = logging.getLogger(__name__)

POLL_TIMEOUT = 20.0  # seconds a long poll waits at the service
OUTBOX_LIMIT = 500  # messages a slow browser may be behind before it is dropped
OUTBOX_BYTES = 8 << 20  # ... or bytes
MAX_IN_FLIGHT = 16  # messages of one WebSocket handled at once
LANE_LIMIT = 64  # messages with one id waiting their turn


class Subscriber:
    """One WebSocket connection's outbox of encoded frames, drained by its own writer thread
    (a greenlet under gevent).

    The outbox holds at most ``OUTBOX_LIMIT`` frames and ``max_bytes`` bytes (one frame larger
    than that still goes when the outbox is empty). Past either, the connection is dropped, on a
    greenlet of its own: whoever pushed (the publisher, fanning out to everyone) never waits.
    """

    def __init__(self, send: Callable[[bytes], None], close: Callable[[], None], max_bytes: int = OUTBOX_BYTES):
        self._send = send
        self._close = close
        self.max_bytes = max_bytes
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._bytes = 0
        self._lock = threading.Lock()
        self.dropped = False
        self._writer = threading.Thread(target=self._write_loop, name="ws-writer", daemon=True)
        self._writer.start()

    def push(self, frame: bytes) -> None:
        if self.dropped:
            return
        with self._lock:
            full = self._outbox.qsize() >= OUTBOX_LIMIT or (self._bytes and self._bytes + len(frame) > self.max_bytes)
            if not full:
                self._bytes += len(frame)
                self._outbox.put_nowait(frame)
                return
            behind = self._bytes
        self.dropped = True
        log.warning("a WebSocket client fell behind (%d messages, %d bytes unread); dropping it",
                    self._outbox.qsize(), behind)
        threading.Thread(target=self._close, name="ws-drop", daemon=True).start()

    def _write_loop(self) -> None:
        while True:
            frame = self._outbox.get()
            if frame is None:
                return
            with self._lock:
                self._bytes -= len(frame)
            try:
                self._send(frame)
            except Exception:
                self._close()
                return

    def stop(self) -> None:
        self._outbox.put_nowait(None)


class ServiceWatcher:
    """Long-polls one service's change events while anyone subscribes, and fans them out."""

    def __init__(self, proxy: ServiceProxy):
        self.proxy = proxy
        self.version: int | None = None
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def subscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(sub)
            if self._thread is None:
                metrics.gateway_stats().watchers.inc()
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name=f"watch-{self.proxy.name}", daemon=True)
                self._thread.start()

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def current_version(self, timeout: float = 5.0) -> int | None:
        self._ready.wait(timeout)
        return self.version

    def _ask(self, since: int, timeout: float) -> dict[str, Any]:
        body = protocol.dumps({"cmd": "changes", "args": {"since": since, "timeout": timeout}})
        reply = self.proxy.post(body)
        answer = json.loads(reply.body)
        ok, value = protocol.parse_answer(answer)
        if not ok:
            raise ForwardError(502, f"changes failed: {value}")
        return value

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                if not self._subscribers:
                    metrics.gateway_stats().watchers.dec()
                    self._thread = None
                    self.version = None  # learnt afresh when someone subscribes again
                    return
            try:
                if self.version is None:
                    self.version = self._ask(0, 0)["version"]
                    self._ready.set()
                    continue
                result = self._ask(self.version, POLL_TIMEOUT)
                backoff = 0.0
            except (ForwardError, ValueError, KeyError, TypeError) as exc:
                log.info("watching %s: %s", self.proxy.name, exc)
                self._ready.set()
                backoff = min(5.0, backoff * 2 or 0.25)
                time.sleep(backoff)
                continue
            if result.get("events") or result.get("reset"):
                self.publish(result)
            self.version = result["version"]

    def long_poll(self, since: int, timeout: float) -> None:
        """Wait (up to ``timeout``) until the service has changes after ``since``.

        HTTP long polls (``changes`` with a timeout, as the browser library's fallback sends)
        wait here, on the gateway's one watcher, instead of each holding one of the service's
        threads for the whole wait; the caller then asks the service without waiting.
        """
        waker = _Wakeup()
        self.subscribe(waker)
        try:
            if self.current_version() == since:
                waker.event.wait(timeout)
        finally:
            self.unsubscribe(waker)

    def publish(self, result: dict[str, Any]) -> None:
        message = text_frame(change_message(self.proxy.name, result))  # framed once for everyone
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.push(message)
        metrics.gateway_stats().events.inc(sum(isinstance(s, Subscriber) for s in subscribers))


#: The longest a long poll waits at the gateway (below the forwarding timeout).
MAX_LONG_POLL = 25.0


def wait_for_changes_here(watcher: ServiceWatcher, body: bytes) -> bytes:
    """If ``body`` is a long poll (``changes`` with a timeout), wait for it on the gateway's watcher
    and return the same question without the wait; any other body is returned as it is.

    Then any number of long polls leave the service's threads free for commands.
    """
    if b'"changes"' not in body:
        return body
    try:
        request = protocol.parse_request(body)
    except protocol.BodyError:
        return body
    item = request.items[0] if len(request.items) == 1 and not request.batch else None
    if not isinstance(item, protocol.Command) or item.cmd != "changes" or set(item.args) - {"since", "timeout"}:
        return body
    since, timeout = item.args.get("since", 0), item.args.get("timeout", 0)
    if not _is_int(since) or not (_is_int(timeout) or isinstance(timeout, float)) or timeout <= 0:
        return body  # not a plain long poll: the service answers it as it is
    watcher.long_poll(since, min(float(timeout), MAX_LONG_POLL))
    return protocol.dumps({"cmd": "changes", "args": {"since": since, "timeout": 0}})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Wakeup:
    """A subscriber that only notes that something was published."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def push(self, frame: bytes) -> None:
        self.event.set()


def change_message(service: str, result: dict[str, Any]) -> str:
    out: dict[str, Any] = {"event": "change", "service": service, "version": result["version"],
                           "events": result.get("events", [])}
    if result.get("reset"):
        out["reset"] = True
    return json.dumps(out, separators=(",", ":"))


class PushSession:
    """The gateway's side of one WebSocket: commands in, answers and events out."""

    def __init__(self, ws: Any, proxies: dict[str, ServiceProxy], watchers: dict[str, ServiceWatcher],
                 authorize: Callable[[str, list[protocol.Item], dict[str, Any]], str | None],
                 max_in_flight: int = MAX_IN_FLIGHT, outbox_bytes: int = OUTBOX_BYTES):
        self.ws = ws
        self.proxies = proxies
        self.watchers = watchers
        self.authorize = authorize
        self.subscriber = Subscriber(ws.send_frame, self._drop, outbox_bytes)
        self.subscribed: set[str] = set()
        self._slots = threading.BoundedSemaphore(max(1, max_in_flight))
        self._lanes: dict[str, collections.deque[Any]] = {}  # id -> messages waiting behind the one running
        self._lanes_lock = threading.Lock()

    def _drop(self) -> None:
        try:
            self.ws.drop(1008, "too slow")
        except Exception:
            pass

    def run(self) -> None:
        """Read messages and start each on its own greenlet (at most ``max_in_flight`` at once;
        the reader waits for a free one); those with the same id run one after the other."""
        try:
            while True:
                text = self.ws.receive()
                if text is None:
                    if self.ws.closed:
                        return
                    continue
                try:
                    msg: Any = protocol.loads(text)
                except protocol.BodyError as exc:
                    self.subscriber.push(text_frame(_reply(None, protocol.error(str(exc)))))
                    continue
                self._start(msg)
        finally:
            for name in self.subscribed:
                self.watchers[name].unsubscribe(self.subscriber)
            self.subscriber.stop()

    def _start(self, msg: Any) -> None:
        mid = msg.get("id") if isinstance(msg, dict) else None
        try:
            key = json.dumps(mid, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            key = "null"
        with self._lanes_lock:
            lane = self._lanes.get(key)
            if lane is not None:
                if len(lane) < LANE_LIMIT:
                    lane.append(msg)
                    return
                busy = True
            else:
                busy = False
        if busy:
            self.subscriber.push(text_frame(_reply(mid, protocol.error(
                f"too many messages with id {protocol.short(key, 40)} are waiting; use distinct ids"))))
            return
        self._slots.acquire()
        with self._lanes_lock:
            self._lanes[key] = collections.deque([msg])
        threading.Thread(target=self._run_lane, args=(key,), name="ws-message", daemon=True).start()

    def _run_lane(self, key: str) -> None:
        try:
            while True:
                with self._lanes_lock:
                    lane = self._lanes[key]
                    if not lane:
                        del self._lanes[key]
                        return
                    msg = lane.popleft()
                try:
                    reply = self.handle_message(msg)
                except (RecursionError, ValueError, TypeError) as exc:  # e.g. nesting too deep to re-encode
                    reply = _reply(None, protocol.error(f"message refused: {type(exc).__name__}"))
                self.subscriber.push(text_frame(reply))
        finally:
            self._slots.release()

    def handle(self, text: str) -> str:
        """Answer one message (as JSON text)."""
        try:
            msg = protocol.loads(text)
        except protocol.BodyError as exc:
            return _reply(None, protocol.error(str(exc)))
        return self.handle_message(msg)

    def handle_message(self, msg: Any) -> str:
        """Answer one decoded message (as JSON text)."""
        if not isinstance(msg, dict):
            return _reply(None, protocol.error("a message must be a JSON object"))
        mid = msg.get("id")
        if "subscribe" in msg:
            return _reply(mid, self.subscribe(msg["subscribe"]))
        if "unsubscribe" in msg:
            names = msg["unsubscribe"] if isinstance(msg["unsubscribe"], list) else []
            for name in names:
                if name in self.subscribed:
                    self.subscribed.discard(name)
                    self.watchers[name].unsubscribe(self.subscriber)
            return _reply(mid, protocol.ok())
        service = msg.get("service")
        proxy = self.proxies.get(service) if isinstance(service, str) else None
        if proxy is None:
            return _reply(mid, protocol.error(f"no service named {protocol.short(service, 60)}"))
        if "batch" in msg:
            body: Any = msg["batch"]
            if not isinstance(body, list):
                return _reply(mid, protocol.error("'batch' must be a list of commands"))
        else:
            body = {k: v for k, v in msg.items() if k in ("cmd", "args")}
        request = protocol.Request([protocol.to_item(c) for c in (body if isinstance(body, list) else [body])],
                                   isinstance(body, list))
        refusal = self.authorize(service, request.items, msg)
        if refusal:
            return _reply(mid, protocol.error(refusal))
        try:
            data = wait_for_changes_here(self.watchers[service], protocol.dumps(body))
            reply = proxy.post(data, repeatable=lambda: only_reads(request.items))
            answer = json.loads(reply.body)
        except ForwardError as exc:
            return _reply(mid, protocol.error(exc.message))
        except ValueError:
            return _reply(mid, protocol.error(f"service {service!r} answered something that is not JSON"))
        if isinstance(body, list):
            return _reply(mid, {"answers": answer} if isinstance(answer, list) else answer)
        return _reply(mid, answer)

    def subscribe(self, spec: Any) -> dict[str, Any]:
        if isinstance(spec, list):
            spec = {name: None for name in spec}
        if not isinstance(spec, dict):
            return protocol.error("'subscribe' must be an object of service name to version (or null)")
        unknown = [n for n in spec if n not in self.watchers]
        if unknown:
            return protocol.error(f"no service named {protocol.short(unknown[0], 60)}")
        result = {}
        for name, since in spec.items():
            watcher = self.watchers[name]
            if name not in self.subscribed:
                self.subscribed.add(name)
                watcher.subscribe(self.subscriber)
            version = watcher.current_version()
            if isinstance(since, int) and not isinstance(since, bool) and version is not None and since != version:
                self._catch_up(name, since)
            result[name] = {"version": version}
        return protocol.ok(result)

    def _catch_up(self, name: str, since: int) -> None:
        """Send a returning client what it missed (or a reset) straight away."""
        try:
            missed = self.watchers[name]._ask(since, 0)
        except (ForwardError, ValueError, KeyError, TypeError):
            return
        if missed.get("events") or missed.get("reset"):
            self.subscriber.push(text_frame(change_message(name, missed)))


def _reply(mid: Any, answer: dict[str, Any]) -> str:
    out = dict(answer)
    if mid is not None:
        out["id"] = mid
    return json.dumps(out, separators=(",", ":"))
