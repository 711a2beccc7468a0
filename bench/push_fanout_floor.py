"""The push benchmark's minimal fan-out floor: one loop sending one pre-framed WebSocket message to every socket.

Usage: ``python -m bench.push_fanout_floor PORT SAMPLE_FILE``. The least any sender spends on a
broadcast: the handshake is answered once per connection, then each stamp is framed once and written
with one ``send`` per socket, in one loop, by one thread; nothing is read from a watcher but its
close. A socket whose send buffer is full is dropped (a floor does not queue). The message is the
sample (a change message as the gateway sent it for a stamp module) with its ``time``, ``seq`` and
``sent`` filled in anew (``sent``: now, or the time the stamp was due when the server is behind:
bench.push_wire.stamp_time), as in bench/push_broadcast_floor.py, whose standard-input commands it
takes:

- ``stamp INTERVAL SECONDS``: send a stamp every INTERVAL s for SECONDS s, then print ``done N``;
- end of input: close every connection and exit.

It prints ``ready`` once it listens (backlog 4096, like the other servers here).
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import sys
import time
from pathlib import Path

from bench.push_wire import stamp_template, stamp_time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(text: str) -> bytes:
    """One unmasked text frame, as a server sends it."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def answer(request: bytes) -> bytes | None:
    """The 101 answer to a WebSocket handshake request, or None when it names no key."""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            accept = base64.b64encode(hashlib.sha1(value.strip() + GUID).digest())
            return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return None


class FanOut:
    """The listening socket, the handshakes under way and the open watchers, on one epoll."""

    def __init__(self, port: int, sample: bytes):
        self.pieces = stamp_template(sample)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.stdin = sys.stdin.fileno()
        self.epoll.register(self.stdin, select.EPOLLIN)
        self.handshaking: dict[int, tuple[socket.socket, bytes]] = {}
        self.open: dict[int, socket.socket] = {}
        self.commands = b""
        self.seq = 0
        self.busy_until = 0.0  # when the last broadcast ended (time.time())
        self.eof = False

    def serve(self, timeout: float) -> None:
        """Accept, answer handshakes, notice closes and commands, for at most ``timeout`` s."""
        for fd, _ in self.epoll.poll(timeout):
            if fd == self.listener.fileno():
                self._accept()
            elif fd == self.stdin:
                chunk = os.read(self.stdin, 4096)
                self.commands += chunk
                self.eof = self.eof or not chunk
                if not chunk:
                    self.epoll.unregister(self.stdin)
            elif fd in self.handshaking:
                self._handshake(fd)
            elif fd in self.open:
                self._read(fd)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handshaking[sock.fileno()] = (sock, b"")
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _handshake(self, fd: int) -> None:
        sock, got = self.handshaking[fd]
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        got += chunk
        reply = answer(got) if b"\r\n\r\n" in got else None
        if chunk and b"\r\n\r\n" not in got:
            self.handshaking[fd] = (sock, got)
            return
        del self.handshaking[fd]
        if reply is None:
            self._close(fd, sock)
            return
        sock.send(reply)
        self.open[fd] = sock

    def _read(self, fd: int) -> None:
        """A watcher speaks only to close (or pong): any end of stream or close frame ends it."""
        sock = self.open[fd]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or data[0] & 0x0F == 8:
            del self.open[fd]
            self._close(fd, sock)

    def _close(self, fd: int, sock: socket.socket) -> None:
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        sock.close()

    def broadcast(self, due: float) -> None:
        """One stamp (due at ``due``, time.time()'s clock): framed once, one send per watcher."""
        self.seq += 1
        a, b, c, d = self.pieces
        now = repr(stamp_time(due, self.busy_until))
        data = frame(f"{a}{now}{b}{self.seq}{c}{now}{d}")
        dropped = []
        for fd, sock in self.open.items():
            try:
                if sock.send(data) != len(data):
                    dropped.append(fd)
            except OSError:
                dropped.append(fd)
        for fd in dropped:
            self._close(fd, self.open.pop(fd))
        self.busy_until = time.time()

    def stamp(self, interval: float, seconds: float) -> None:
        due = time.monotonic()
        end = due + seconds
        wall = time.time() - due  # monotonic -> time.time()
        while due < end:
            self.broadcast(due + wall)
            due += interval
            while (left := due - time.monotonic()) > 0:
                self.serve(left)

    def run(self) -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while not self.eof or b"\n" in self.commands:
            if b"\n" not in self.commands:
                self.serve(1.0)
                continue
            line, self.commands = self.commands.split(b"\n", 1)
            words = line.split()
            if words and words[0] == b"stamp":
                self.stamp(float(words[1]), float(words[2]))
                sys.stdout.write(f"done {self.seq}\n")
                sys.stdout.flush()
        for fd, sock in list(self.open.items()):
            self._close(fd, sock)


if __name__ == "__main__":
    FanOut(int(sys.argv[1]), Path(sys.argv[2]).read_bytes()).run()
