"""Push: the WebSocket message protocol of the gateway (commands in; answers and events out).

Messages from the browser (JSON text, ``id`` echoed in the answer):

* ``{"id": 1, "service": "queue", "cmd": "add", "args": {...}}`` -> ``{"id": 1, "success": ..., ...}``
* ``{"id": 2, "service": "queue", "batch": [{...}, ...]}`` -> ``{"id": 2, "answers": [...]}``
* ``{"id": 3, "subscribe": {"queue": VERSION_OR_NULL, ...}}`` -> ``{"id": 3, "success": true,
  "result": {"queue": {"version": V}}}``; then events are pushed as
  ``{"event": "change", "service": "queue", "version": V, "events": [...], "reset"?: true}``
* ``{"id": 4, "unsubscribe": ["queue"]}``

Messages on one connection run concurrently, each answer carrying its ``id``; messages with
the same ``id`` are answered in the order they came. Events come from the gateway worker's
watchers (:mod:`shmooze.gateway.fanout`); long polls inside a message wait there too
(:mod:`shmooze.gateway.longpoll`).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Any, Callable

from shmooze import protocol
from shmooze.gateway.fanout import OUTBOX_BYTES, ServiceWatcher, Subscriber, change_message
from shmooze.gateway.longpoll import wait_for_changes_here
from shmooze.http.forward import ForwardError, ServiceProxy
from shmooze.http.websocket import WebSocket, text_frame
from shmooze.http.wsloop import SocketLoop
from shmooze.registry import Declared

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = Declared.ws_max_in_flight.default  # messages of one WebSocket handled at once
#: Guards every session's lanes and count of messages running (held for a few lines, never across a wait).
_LANES_LOCK = threading.Lock()
LANE_LIMIT = 64  # messages with one id waiting their turn


class PushSession:
    """The gateway's side of one WebSocket: commands in, answers and events out."""

    def __init__(self, ws: WebSocket, proxies: dict[str, ServiceProxy], watchers: dict[str, ServiceWatcher],
                 authorize: Callable[[str, list[protocol.Item], dict[str, Any]], str | dict[str, Any] | None],
                 is_read: Callable[[str, list[protocol.Item]], bool],
                 max_in_flight: int = MAX_IN_FLIGHT, outbox_bytes: int = OUTBOX_BYTES,
                 caller_of: Callable[[dict[str, Any]], bytes] = lambda msg: b"",
                 on_end: Callable[[], None] | None = None):
        self.ws = ws
        #: Called once the connection is over.
        self.on_end = on_end
        self._loop: SocketLoop | None = None
        #: Who sends a message's command, as the service is told (:mod:`shmooze.caller`): the socket's
        #: caller, or the holder of a token the message carries.
        self.caller_of = caller_of
        # whether a service's commands change nothing (may be sent again after a lost answer)
        self.is_read = is_read
        self.proxies = proxies
        self.watchers = watchers
        self.authorize = authorize
        self.subscriber = Subscriber(ws, outbox_bytes)
        self.subscribed: set[str] = set()
        self.max_in_flight = max(1, max_in_flight)
        # No semaphore or lock of its own: an idle watcher would hold a kilobyte of them (times 10,000).
        self._running = 0  # lanes running (at most max_in_flight)
        self._room: threading.Event | None = None  # made when the reader first waits for a free slot
        self._lanes: dict[str, collections.deque[Any]] = {}  # id -> messages waiting behind the one running

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
                self._take(text)
        finally:
            self.ended()

    def hold(self, loop: SocketLoop) -> None:
        """Let ``loop`` hold the connection while nothing comes (instead of :meth:`run`): it hands
        over the messages that come (:meth:`messages_waiting`) and tells when it ended (:meth:`ended`)."""
        self._loop = loop
        loop.hold(self.ws, self)

    def messages_waiting(self) -> None:
        threading.Thread(target=self._serve_waiting, name="ws-reader", daemon=True).start()

    def _serve_waiting(self) -> None:
        """Start the messages the loop read (as :meth:`run` does), then give the connection back to it."""
        try:
            while (text := self.ws.next_message()) is not None:
                self._take(text)
        finally:
            if self._loop is not None:
                self._loop.resume(self.ws)

    def ended(self) -> None:
        """The connection is over: it hears no more events."""
        for name in list(self.subscribed):
            self.watchers[name].unsubscribe(self.subscriber)
        self.subscriber.stop()
        if self.on_end is not None:
            self.on_end()

    def _take(self, text: str) -> None:
        try:
            msg: Any = protocol.loads(text)
        except protocol.BodyError as exc:
            self.subscriber.push(text_frame(_reply(None, protocol.error(str(exc)))))
            return
        self._start(msg)

    def _start(self, msg: Any) -> None:
        if isinstance(msg, dict) and "subscribe" in msg:
            self._listen(msg["subscribe"])
        mid = msg.get("id") if isinstance(msg, dict) else None
        try:
            key = json.dumps(mid, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            key = "null"
        with _LANES_LOCK:
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
        self._take_slot()
        with _LANES_LOCK:
            self._lanes[key] = collections.deque([msg])
        threading.Thread(target=self._run_lane, args=(key,), name="ws-message", daemon=True).start()

    def _run_lane(self, key: str) -> None:
        try:
            while True:
                with _LANES_LOCK:
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
            with _LANES_LOCK:
                self._running -= 1
                room = self._room
            if room is not None:
                room.set()

    def _take_slot(self) -> None:
        """Count one more message running, waiting (the reader) while ``max_in_flight`` are."""
        while True:
            with _LANES_LOCK:
                if self._running < self.max_in_flight:
                    self._running += 1
                    return
                if self._room is None:
                    self._room = threading.Event()
                room = self._room
                room.clear()
            room.wait()

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
        if not isinstance(service, str) or service not in self.proxies:
            return _reply(mid, protocol.error(f"no service named {protocol.short(service, 60)}"))
        proxy = self.proxies[service]
        if "batch" in msg:
            body: Any = msg["batch"]
            if not isinstance(body, list):
                return _reply(mid, protocol.error("'batch' must be a list of commands"))
        else:
            body = {k: v for k, v in msg.items() if k in ("cmd", "args")}
        request = protocol.Request([protocol.to_item(c) for c in (body if isinstance(body, list) else [body])],
                                   isinstance(body, list))
        refusal = self.authorize(service, request.items, msg)
        if refusal:  # a message, or a whole answer (one that says to sign in)
            return _reply(mid, refusal if isinstance(refusal, dict) else protocol.error(refusal))
        try:
            data = wait_for_changes_here(self.watchers[service], protocol.dumps(body))
            reply = proxy.post(data, repeatable=lambda: self.is_read(service, request.items), caller=self.caller_of(msg))
            answer = json.loads(reply.body)
        except ForwardError as exc:
            return _reply(mid, protocol.error(exc.message))
        except ValueError:
            return _reply(mid, protocol.error(f"service {service!r} answered something that is not JSON"))
        if isinstance(body, list):
            return _reply(mid, {"answers": answer} if isinstance(answer, list) else answer)
        return _reply(mid, answer)

    def _listen(self, spec: Any) -> None:
        """On the reader, before any later message runs: the subscriber hears the named services'
        events from now on, so a command sent after a subscription never publishes an event that
        the subscription misses (messages otherwise run concurrently). :meth:`subscribe` answers."""
        names = spec if isinstance(spec, list) else list(spec) if isinstance(spec, dict) else []
        for name in names:
            if isinstance(name, str) and name in self.watchers and name not in self.subscribed:
                self.subscribed.add(name)
                self.watchers[name].subscribe(self.subscriber)
                # A watcher that has just started counts from the version it learns first: until it
                # has learnt it, a command's event could fall before it and never be pushed.
                self.watchers[name].current_version()

    def subscribe(self, spec: Any) -> dict[str, Any]:
        if isinstance(spec, list):
            spec = {name: None for name in spec}
        if not isinstance(spec, dict):
            return protocol.error("'subscribe' must be an object of service name to version (or null)")
        unknown = [n for n in spec if n not in self.watchers]
        if unknown:
            return protocol.error(f"no service named {protocol.short(unknown[0], 60)}")
        self._listen(spec)  # (already done on the reader for a message read there)
        result = {}
        for name, since in spec.items():
            version = self.watchers[name].current_version()
            if isinstance(since, int) and not isinstance(since, bool) and version is not None and since != version:
                self._catch_up(name, since)
            result[name] = {"version": version}
        return protocol.ok(result)

    def _catch_up(self, name: str, since: int) -> None:
        """Send a returning client what it missed (or a reset) straight away."""
        try:
            missed = self.watchers[name].changes(since, 0)
        except (ForwardError, ValueError, KeyError, TypeError):
            return
        if missed.get("events") or missed.get("reset"):
            self.subscriber.push(text_frame(change_message(name, missed)))


def _reply(mid: Any, answer: dict[str, Any]) -> str:
    out = dict(answer)
    if mid is not None:
        out["id"] = mid
    return json.dumps(out, separators=(",", ":"))
