"""The fan-out's subscriber: straight out when it can, an outbox only while a connection is behind."""

from __future__ import annotations

import socket
import threading

import pytest

from shmooze.gateway import fanout
from shmooze.gateway.fanout import Subscriber
from shmooze.http.websocket import CLOSE_POLICY, WebSocket, text_frame
from tests.helpers import wait_for


def read_frames(sock: socket.socket, count: int, timeout: float = 10.0) -> list[str]:
    """Read ``count`` unmasked text frames from the server side."""
    sock.settimeout(timeout)
    buf = b""
    out: list[str] = []
    while len(out) < count:
        while True:
            if len(buf) >= 2:
                size, head = buf[1] & 0x7F, 2
                if size == 126 and len(buf) >= 4:
                    size, head = int.from_bytes(buf[2:4], "big"), 4
                elif size == 127 and len(buf) >= 10:
                    size, head = int.from_bytes(buf[2:10], "big"), 10
                if size < 126 or head > 2:
                    if len(buf) >= head + size:
                        assert buf[0] == 0x81
                        out.append(buf[head:head + size].decode())
                        buf = buf[head + size:]
                        break
            data = sock.recv(1 << 20)
            assert data, "connection closed"
            buf += data
    return out


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    ws = WebSocket(server, send_timeout=10)
    yield ws, client
    ws.drop()
    client.close()


def test_frames_go_straight_out_without_a_writer(pair):
    ws, client = pair
    sub = Subscriber(ws)
    threads = threading.active_count()
    for i in range(50):
        sub.push(text_frame(f"event {i}"))
    assert threading.active_count() == threads  # no writer was needed
    # Inside: whether a writer thread and an outbox were needed: nothing public tells.
    assert not sub._writing and not sub._outbox  # noqa: SLF001
    assert read_frames(client, 50) == [f"event {i}" for i in range(50)]


def test_a_peer_that_stops_reading_gets_an_outbox_and_everything_in_order(pair):
    ws, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sub = Subscriber(ws)
    big = "x" * 20000
    texts = [f"{i} {big}" for i in range(40)]  # far more than the socket buffers hold
    for text in texts:
        sub.push(text_frame(text))
    # Inside: whether the writer and its outbox took over: nothing public tells.
    assert sub._writing and (sub._outbox or ws.unsent)  # the rest waits for the peer  # noqa: SLF001
    assert read_frames(client, 40) == texts
    wait_for(lambda: not sub._writing, 10, what="the writer to finish")  # noqa: SLF001
    sub.push(text_frame("after"))  # caught up: straight out again
    assert read_frames(client, 1) == ["after"]


def test_a_peer_too_far_behind_is_dropped(pair, monkeypatch):
    ws, client = pair
    monkeypatch.setattr(fanout, "OUTBOX_LIMIT", 5)
    sub = Subscriber(ws, max_bytes=1 << 30)
    frame = text_frame("y" * 100000)
    for _ in range(40):
        sub.push(frame)
    assert sub.dropped
    wait_for(lambda: ws.closed, 10, what="the connection to be dropped")
    assert ws.close_code == CLOSE_POLICY
