"""Bare-socket clients for the push benchmark: many WebSocket watchers on one epoll, with their arrival times.

Arrival times are the kernel's receive timestamps (``SO_TIMESTAMPNS``, CLOCK_REALTIME, the same clock
as ``time.time()`` in the module), so the time this process takes to get round to a socket among a
thousand others is not counted as the framework's latency. The user-space time right after ``recv``
is kept too, for comparison.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import struct
import time
from array import array
from typing import Any, Callable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
ANC_SPACE = socket.CMSG_SPACE(16)
RECV_BYTES = 262144
#: a stamp event as the service writes it: {"version":..,"kind":"parameters","time":T,...,"set":{"seq":N,"sent":S}}
_STAMP = re.compile(rb'"kind":"parameters","time":([-+.0-9eE]+),[^{}]*"set":\{"seq":(\d+),"sent":([-+.0-9eE]+)\}')


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


def handshake(port: int, path: str = "/ws", timeout: float = 10.0, host: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """Open a WebSocket on host:port (127.0.0.1); return the socket and bytes that came after the 101."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                     .encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {head[:200]!r}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, rest
    except BaseException:
        sock.close()
        raise


class Watcher:
    __slots__ = ("index", "sock", "fd", "buf", "parts", "closed", "answers", "messages")

    def __init__(self, index: int, sock: socket.socket, rest: bytes):
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(rest)
        self.parts: list[bytes] = []
        self.closed = False
        self.answers: dict[Any, Any] = {}
        self.messages = 0

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


class Fleet:
    """N WebSocket watchers of one gateway, served by one epoll loop."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.port = port
        self.host = host
        self.watchers: list[Watcher] = []
        self.by_fd: dict[int, Watcher] = {}
        self.epoll = select.epoll()
        self.timestamps = True
        self.closed_by_server = 0
        self.next_id = 1

    def connect(self, n: int, deadline: float) -> None:
        """Open ``n`` more watchers; those already open are served every 100 (pings answered meanwhile)."""
        for i in range(n):
            if i and i % 100 == 0:
                self.pump(0, None)
            if time.monotonic() > deadline:
                raise TimeoutError(f"connected {len(self.watchers)} of {n} watchers before the deadline")
            sock, rest = handshake(self.port, host=self.host)
            self.timestamps = enable_timestamps(sock) and self.timestamps
            sock.setblocking(False)
            w = Watcher(len(self.watchers), sock, rest)
            self.watchers.append(w)
            self.by_fd[w.fd] = w
            self.epoll.register(w.fd, select.EPOLLIN)

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
        to that instead, undecoded (a thousand watchers' events are too many to decode in time).
        """
        fast = getattr(getattr(on_text, "__self__", None), "on_change_bytes", None)
        ready = self.epoll.poll(timeout, 4096)
        got = []
        for fd, _mask in ready:
            w = self.by_fd.get(fd)
            if w is None or w.closed:
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
            got.append((w, data, kernel, user))
        for w, data, kernel, user in got:
            w.buf += data
            for opcode, payload in w.frames():
                if opcode == 1:
                    w.messages += 1
                    if fast is not None and payload.startswith(b'{"event":"change"'):
                        fast(w, payload, kernel, user)  # the common case, without a full JSON decode
                        continue
                    msg = json.loads(payload)
                    if "id" in msg and "event" not in msg:
                        w.answers[msg["id"]] = msg
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

    def run(self, seconds: float, on_text: Callable[..., None]) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.2), on_text)

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
        self.epoll.close()
        self.watchers = []
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
            sent = float(sent_b)
            if not self.start <= sent <= self.end:
                continue
            seq = int(seq_b)
            self.kernel.append((kernel - sent) * 1000.0)
            self.user.append((user - sent) * 1000.0)
            self.per_watcher[w.index] += 1
            if seq not in self.seqs:
                self.seqs.add(seq)
                self.publish[seq] = (float(published) - sent) * 1000.0

    def on_text(self, w: Watcher, msg: dict[str, Any], kernel: float, user: float) -> None:
        if msg.get("event") != "change":
            return
        for ev in msg.get("events", ()):
            if ev.get("kind") != "parameters":
                continue
            values = ev.get("set") or {}
            sent = values.get("sent")
            if sent is None or not self.start <= sent <= self.end:
                continue
            seq = values.get("seq")
            self.kernel.append((kernel - sent) * 1000.0)
            self.user.append((user - sent) * 1000.0)
            self.per_watcher[w.index] += 1
            if seq not in self.seqs:
                self.seqs.add(seq)
                self.publish[seq] = (ev.get("time", sent) - sent) * 1000.0
