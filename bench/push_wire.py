"""Bare-socket clients for the push benchmark: many WebSocket watchers on one epoll, with their arrival times.

Arrival times are the kernel's receive timestamps (``SO_TIMESTAMPNS``, CLOCK_REALTIME, the same clock
as ``time.time()`` in the module), so the time this process takes to get round to a socket among a
thousand others is not counted as the framework's latency. The user-space time right after ``recv``
is kept too, for comparison.

The fleet is meant to cost little beside the server it measures (10,000 watchers on a 2-core machine):
every watcher sends the same pre-built handshake request (and subscribe frame), up to a few hundred
handshakes are in flight at once on the same epoll, and a change event that came as one whole frame
in one ``recv`` (the common case) skips the general frame parser. A fleet told to ``rejoin``
reconnects (and subscribes again) every watcher the server closed, as screens on a wall do when their
server restarts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import socket
import struct
import time
from array import array
from collections import deque
from typing import Any, Callable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
ANC_SPACE = socket.CMSG_SPACE(16)
RECV_BYTES = 16384  # below malloc's mmap threshold: a bigger buffer costs an mmap and munmap per recv
#: a stamp event as the service writes it: {"version":..,"kind":"parameters","time":T,...,"set":{"seq":N,"sent":S}}
_STAMP = re.compile(rb'"kind":"parameters","time":([-+.0-9eE]+),[^{}]*"set":\{"seq":(\d+),"sent":([-+.0-9eE]+)\}')
#: one key for every watcher's handshake (RFC 6455's example): the answer's status is all that is checked
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: the id of the subscribe message each watcher sends right after its handshake
SUBSCRIBE_ID = "sub"
#: handshakes in flight at once while a fleet connects (below every server's listen backlog here)
IN_FLIGHT = 400
#: pause before a watcher tries again after a refused or failed connection (its server restarting)
RETRY_S = 0.05


def stamp_template(sample: bytes) -> tuple[str, str, str, str]:
    """A change message cut around its stamp's time, seq and sent values: four pieces to put new values
    between, so that every anchor sends a message of the same size and shape as the gateway's."""
    found = _STAMP.search(sample)
    if not found:
        raise ValueError("the sample holds no stamp event")
    text = sample.decode()
    (t0, t1), (q0, q1), (s0, s1) = found.span(1), found.span(2), found.span(3)
    return text[:t0], text[t1:q0], text[q1:s0], text[s1:]


def stamp_time(due: float, busy_until: float) -> float:
    """The time an anchor writes into a stamp due at ``due``: ``due`` when the sender was still busy
    with the previous stamp then (``busy_until``; time.time()'s clock), else now. An anchor that falls
    behind its schedule thus counts its lag as latency, as the gateway's lag behind the module counts
    (the module stamps on time in its own process), while a timer's late wake-up is not counted."""
    return due if busy_until > due else time.time()


def handshake_request(host: str, port: int, path: str) -> bytes:
    """The HTTP request that opens a WebSocket: the same bytes for every watcher of a fleet."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def enable_timestamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


def recv_stamped(sock: socket.socket) -> tuple[bytes, float, float]:
    """(data, kernel arrival time, user-space time); the kernel time falls back to the user one."""
    data, anc, _flags, _addr = sock.recvmsg(RECV_BYTES, ANC_SPACE)
    user = time.time()
    kernel = user
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            kernel = sec + nsec * 1e-9
    return data, kernel, user


def client_frame(text: str) -> bytes:
    """One masked text frame, as a client must send it."""
    payload = text.encode("utf-8")
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + payload


class Watcher:
    __slots__ = ("index", "sock", "fd", "buf", "parts", "closed", "answers", "messages", "subscribed")

    def __init__(self, index: int, sock: socket.socket, rest: bytes):
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(rest)
        self.parts: list[bytes] = []
        self.closed = False
        self.answers: dict[Any, Any] = {}
        self.messages = 0
        self.subscribed = False

    def frames(self) -> list[tuple[int, bytes]]:
        """Complete (opcode, payload) messages in the buffer; continuation frames are joined."""
        out = []
        buf = self.buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4  # servers do not mask; tolerate it anyway (payload left masked)
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 0:
                self.parts.append(payload)
                if b0 & 0x80:
                    out.append((1, b"".join(self.parts)))
                    self.parts = []
            elif opcode == 1 and not b0 & 0x80:
                self.parts = [payload]
            else:
                out.append((opcode, payload))
        if pos:
            del buf[:pos]
        return out


def whole_text_frame(data: bytes) -> bytes | None:
    """The payload when ``data`` is exactly one unfragmented, unmasked text frame, else None."""
    if len(data) < 2 or data[0] != 0x81:
        return None
    n = data[1]
    head = 2
    if n == 126:
        n = int.from_bytes(data[2:4], "big")
        head = 4
    elif n > 126:
        return None
    return data[head:] if head + n == len(data) else None


class Pending:
    """A watcher's connection while its handshake is under way."""

    __slots__ = ("index", "sock", "buf", "sent")

    def __init__(self, index: int, sock: socket.socket):
        self.index = index
        self.sock = sock
        self.buf = b""
        self.sent = False


class Fleet:
    """N WebSocket watchers of one server, served by one epoll loop.

    ``path`` is the WebSocket's path; ``subscribe``, when given, is the message (without its id)
    each watcher sends right after its handshake (the gateway's ``{"subscribe": {"queue": None}}``);
    without it a watcher counts as subscribed once its handshake is answered.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", path: str = "/ws",
                 subscribe: dict[str, Any] | None = None):
        self.port = port
        self.host = host
        self.path = path
        self.request = handshake_request(host, port, path)
        self.subscribe_frame = client_frame(json.dumps({**subscribe, "id": SUBSCRIBE_ID})) if subscribe else b""
        self.slots: list[Watcher | None] = []
        self.by_fd: dict[int, Watcher] = {}
        self.pending: dict[int, Pending] = {}
        self.todo: deque[int] = deque()  # slots waiting for a connection
        self.retry_at = 0.0
        self.rejoin = False  # reconnect the watchers the server closes
        self.first_lost = 0.0  # monotonic time of the first watcher closed by the server (while rejoining)
        self.last_subscribed = 0.0  # monotonic time the last watcher got subscribed
        self.failed_connects = 0
        self.epoll = select.epoll()
        self.timestamps = True
        self.closed_by_server = 0
        self.next_id = 1

    @property
    def watchers(self) -> list[Watcher]:
        return [w for w in self.slots if w is not None]

    def connect(self, n: int, deadline: float) -> None:
        """Open ``n`` more watchers (and subscribe them); return once every one is subscribed."""
        start = len(self.slots)
        self.slots.extend([None] * n)
        self.todo.extend(range(start, start + n))
        while self.subscribed_count() < len(self.slots):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.subscribed_count()} of {len(self.slots)} watchers of port {self.port} "
                                   f"connected and subscribed before the deadline ({self.failed_connects} "
                                   "connections failed and were tried again)")
            self.pump(0.05, None)

    def subscribed_count(self) -> int:
        return sum(1 for w in self.slots if w is not None and w.subscribed and not w.closed)

    def _open_more(self) -> None:
        """Start connections for waiting slots, up to :data:`IN_FLIGHT` handshakes at once."""
        if not self.todo or time.monotonic() < self.retry_at:
            return
        while self.todo and len(self.pending) < IN_FLIGHT:
            index = self.todo.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((self.host, self.port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self._retry(index)
                return
            self.pending[sock.fileno()] = Pending(index, sock)
            self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def _retry(self, index: int) -> None:
        self.failed_connects += 1
        self.todo.appendleft(index)
        self.retry_at = time.monotonic() + RETRY_S

    def _advance(self, fd: int, p: Pending) -> None:
        """One step of a handshake: connected (send the request), or the answer (a watcher, or retry)."""
        try:
            if not p.sent:
                err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                p.sock.send(self.request)  # a few hundred bytes: one send on a fresh socket
                p.sent = True
                self.epoll.modify(fd, select.EPOLLIN)
                return
            chunk = p.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            p.buf += chunk
            if b"\r\n\r\n" not in p.buf:
                return
            head, rest = p.buf.split(b"\r\n\r\n", 1)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise ConnectionError(f"handshake refused: {head[:200]!r}")
        except OSError:
            del self.pending[fd]
            self.epoll.unregister(fd)
            p.sock.close()
            self._retry(p.index)
            return
        del self.pending[fd]
        p.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timestamps = enable_timestamps(p.sock) and self.timestamps
        w = Watcher(p.index, p.sock, rest)
        old = self.slots[p.index]
        if old is not None:
            old.sock.close()
        self.slots[p.index] = w
        self.by_fd[fd] = w
        if self.subscribe_frame:
            p.sock.send(self.subscribe_frame)
        else:
            self._subscribed(w)
        if rest:
            self._take(w, b"", 0.0, 0.0, None, None)

    def _subscribed(self, w: Watcher) -> None:
        w.subscribed = True
        self.last_subscribed = time.monotonic()

    def send_all(self, message: dict[str, Any]) -> Any:
        """Send the same message (with one new id) to every watcher; return the id."""
        mid = self.next_id
        self.next_id += 1
        frame = client_frame(json.dumps({**message, "id": mid}))
        for w in self.watchers:
            if not w.closed:
                w.sock.setblocking(True)
                try:
                    w.sock.sendall(frame)
                finally:
                    w.sock.setblocking(False)
        return mid

    def wait_answers(self, mid: Any, deadline: float, on_text: Callable[..., None] | None = None) -> int:
        """Pump until every open watcher has the answer to ``mid``; return how many have it."""
        while time.monotonic() < deadline:
            if all(mid in w.answers or w.closed for w in self.watchers):
                break
            self.pump(0.1, on_text)
        return sum(1 for w in self.watchers if mid in w.answers)

    def pump(self, timeout: float, on_text: Callable[[Watcher, dict[str, Any], float, float], None] | None) -> None:
        """One round: receive from every readable watcher (stamping), then decode what came.

        When ``on_text`` is a bound method whose object has ``on_change_bytes``, change events go
        to that instead, undecoded (ten thousand watchers' events are too many to decode in time).
        """
        self._open_more()
        fast = getattr(getattr(on_text, "__self__", None), "on_change_bytes", None)
        ready = self.epoll.poll(timeout, 4096)
        got = []
        by_fd = self.by_fd
        for fd, _mask in ready:
            w = by_fd.get(fd)
            if w is None:
                p = self.pending.get(fd)
                if p is not None:
                    self._advance(fd, p)
                continue
            if w.closed:
                continue
            try:
                data, kernel, user = recv_stamped(w.sock)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data, kernel, user = b"", 0.0, 0.0
            if not data:
                self._drop(w)
                continue
            if fast is not None and not w.buf:
                payload = whole_text_frame(data)
                if payload is not None and payload.startswith(b'{"event":"change"'):
                    w.messages += 1
                    fast(w, payload, kernel, user)  # the common case: one whole change frame per recv
                    continue
            got.append((w, data, kernel, user))
        for w, data, kernel, user in got:
            self._take(w, data, kernel, user, on_text, fast)

    def _take(self, w: Watcher, data: bytes, kernel: float, user: float, on_text: Callable[..., None] | None,
              fast: Callable[..., None] | None) -> None:
        """Add received bytes to a watcher's buffer and handle every whole message in it."""
        w.buf += data
        for opcode, payload in w.frames():
            if opcode == 1:
                w.messages += 1
                if fast is not None and payload.startswith(b'{"event":"change"'):
                    fast(w, payload, kernel, user)
                    continue
                msg = json.loads(payload)
                if "id" in msg and "event" not in msg:
                    w.answers[msg["id"]] = msg
                    if msg["id"] == SUBSCRIBE_ID and msg.get("success"):
                        self._subscribed(w)
                elif on_text is not None:
                    on_text(w, msg, kernel, user)
            elif opcode == 8:
                self._drop(w)
                break
            elif opcode == 9:  # ping: answer with a pong
                try:
                    w.sock.send(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                except OSError:
                    pass

    def _drop(self, w: Watcher) -> None:
        if w.closed:
            return
        w.closed = True
        self.closed_by_server += 1
        try:
            self.epoll.unregister(w.fd)
        except OSError:
            pass
        self.by_fd.pop(w.fd, None)
        if self.rejoin:
            if not self.first_lost:
                self.first_lost = time.monotonic()
            w.sock.close()
            self.todo.append(w.index)

    def run(self, seconds: float, on_text: Callable[..., None] | None) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.2), on_text)

    def rejoin_all(self, deadline: float) -> dict[str, Any]:
        """Wait until the server has closed every watcher and each is connected and subscribed again
        (reconnecting as soon as the server takes them); the times are this machine's monotonic clock."""
        self.rejoin = True
        self.first_lost = 0.0
        lost0 = self.closed_by_server
        n = len(self.slots)
        try:
            while time.monotonic() < deadline:
                self.pump(0.05, None)
                if self.closed_by_server - lost0 >= n and self.subscribed_count() == n:
                    break
        finally:
            self.rejoin = False
        return {"watchers": n, "lost": self.closed_by_server - lost0, "subscribed": self.subscribed_count(),
                "first_lost": self.first_lost, "last_subscribed": self.last_subscribed,
                "failed_connects": self.failed_connects}

    def open_count(self) -> int:
        return sum(1 for w in self.watchers if not w.closed)

    def close(self) -> None:
        for w in self.watchers:
            if not w.closed:
                try:
                    w.sock.setblocking(True)
                    w.sock.settimeout(0.5)
                    w.sock.sendall(bytes((0x88, 0x82)) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))
                except OSError:
                    pass
                w.closed = True
            try:
                self.epoll.unregister(w.fd)
            except (OSError, ValueError):
                pass
            w.sock.close()
        for p in self.pending.values():
            p.sock.close()
        self.epoll.close()
        self.slots = []
        self.pending = {}
        self.todo.clear()
        self.by_fd = {}


class StampLog:
    """Collects, for the stamp events sent inside a window, each arrival's latency."""

    def __init__(self, start: float, end: float, watchers: int):
        self.start = start
        self.end = end
        self.kernel = array("d")  # ms, one per (watcher, stamp event) arrival
        self.user = array("d")
        self.publish: dict[int, float] = {}  # seq -> ms from the module's send to the service's publish
        self.per_watcher = [0] * watchers
        self.seqs: set[int] = set()
        self.all_seqs: set[int] = set()  # every stamp that arrived while the fleet ran, in the window or not
        self.first_seq = 0  # the lowest and highest seq sent in the window that reached any watcher: a
        self.last_seq = 0  # sender numbers its stamps one by one, so every seq between was sent in it too
        self.late_messages = 0
        self.sample: bytes | None = None  # one change message that carried a stamp, as it came

    def on_change_bytes(self, w: Watcher, payload: bytes, kernel: float, user: float) -> None:
        """A change message as bytes: stamps picked out with a regex (a full decode only as a fallback)."""
        if b'"sent":' not in payload:
            return
        found = _STAMP.findall(payload)
        if not found:
            self.on_text(w, json.loads(payload), kernel, user)
            return
        if self.sample is None:
            self.sample = payload
        for published, seq_b, sent_b in found:
            seq = int(seq_b)
            self.all_seqs.add(seq)
            sent = float(sent_b)
            if not self.start <= sent <= self.end:
                continue
            self.kernel.append((kernel - sent) * 1000.0)
            self.user.append((user - sent) * 1000.0)
            self.per_watcher[w.index] += 1
            if seq not in self.seqs:
                self._first_arrival(seq, (float(published) - sent) * 1000.0)

    def on_text(self, w: Watcher, msg: dict[str, Any], kernel: float, user: float) -> None:
        if msg.get("event") != "change":
            return
        for ev in msg.get("events", ()):
            if ev.get("kind") != "parameters":
                continue
            values = ev.get("set") or {}
            sent = values.get("sent")
            seq = values.get("seq")
            if sent is None:
                continue
            self.all_seqs.add(seq)
            if not self.start <= sent <= self.end:
                continue
            self.kernel.append((kernel - sent) * 1000.0)
            self.user.append((user - sent) * 1000.0)
            self.per_watcher[w.index] += 1
            if seq not in self.seqs:
                self._first_arrival(seq, (ev.get("time", sent) - sent) * 1000.0)

    def _first_arrival(self, seq: int, publish_ms: float) -> None:
        self.seqs.add(seq)
        self.publish[seq] = publish_ms
        self.first_seq = min(self.first_seq or seq, seq)
        self.last_seq = max(self.last_seq, seq)

    def expected_stamps(self) -> int:
        """Stamps sent in the window: every seq from the first to the last that reached anyone."""
        return self.last_seq - self.first_seq + 1 if self.seqs else 0

    def complete(self) -> bool:
        """Whether every stamp sent in the window so far reached every watcher."""
        return len(self.kernel) >= self.expected_stamps() * len(self.per_watcher)
