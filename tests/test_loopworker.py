"""The service worker (shmooze.http.loopworker): quick commands on the connection loop, nothing that may
block there; real services on free ports."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from shmooze.http.loopworker import whole_request
from tests.helpers import Stack

HEAD = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"


def request(cmd: str, **args) -> bytes:
    body = json.dumps({"cmd": cmd, "args": args}).encode()
    return HEAD.format(len(body)).encode() + body


def read_answer(sock: socket.socket, buffered: bytes = b"") -> tuple[dict, bytes]:
    """One HTTP answer from the socket; returns its JSON body and what was read past it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, first = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    rest = bytearray(first)
    while len(rest) < length:
        rest += _recv(sock)
    return json.loads(rest[:length]), bytes(rest[length:])


def _recv(sock: socket.socket) -> bytes:
    piece = sock.recv(65536)
    if not piece:
        raise ConnectionError("closed")
    return piece


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def ask(sock: socket.socket, cmd: str, **args):
    sock.sendall(request(cmd, **args))
    answer, rest = read_answer(sock)
    assert not rest
    assert answer["success"], answer
    return answer.get("result")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("loop"), {"loop": "tests.loop_service:LoopSample"}, service_keepalive=2,
                  service_threads=2, read_threads=2, max_answer_bytes=64 << 20,
                  service_worker="loop")
    try:
        stack.start("loop")
        yield stack.ports["loop"]
    finally:
        stack.stop()


def test_whole_request_takes_exactly_one_request_of_known_length():
    one = request("where")
    assert one[whole_request(one):] == json.dumps({"cmd": "where", "args": {}}).encode()
    assert whole_request(one[:-1]) is None  # the body not all there
    assert whole_request(one + one) is None  # pipelined: the pool's parser reads it
    assert whole_request(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == len(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert whole_request(chunked) is None
    twice = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
    assert whole_request(twice) is None
    assert whole_request(b"POST / HTTP/1.1\r\nContent-Length: -2\r\n\r\n{}") is None
    assert whole_request(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}") is None


def test_quick_commands_run_on_the_loop_and_others_on_the_pool(service):
    sock = connect(service)
    try:
        assert ask(sock, "where") == "MainThread"  # gunicorn's worker loop runs in the main thread
        assert ask(sock, "status")["service"] == "loop"
        assert ask(sock, "where_read") != "MainThread"
        assert ask(sock, "where") == "MainThread"  # the same kept-alive connection, back on the loop
    finally:
        sock.close()


def test_a_blocked_command_and_a_long_poll_hold_no_other_connection(service):
    slow, poll, quick = connect(service), connect(service), connect(service)
    try:
        slow.sendall(request("wait_gate", timeout=30))
        poll.sendall(request("changes", since=10**9, timeout=30))
        started = time.monotonic()
        for _ in range(50):
            assert ask(quick, "where") == "MainThread"
        assert time.monotonic() - started < 10
        ask(quick, "open_gate")
        answer, _ = read_answer(slow)
        assert answer == {"success": True, "result": True}
    finally:
        for sock in (slow, poll, quick):
            sock.close()


def test_an_answer_a_client_does_not_read_does_not_stall_the_loop(service):
    """The socket takes what it can at once; a pool thread sends the rest while the loop serves others."""
    size = 32 << 20  # more than the socket buffers of both ends hold
    lazy, quick = connect(service), connect(service)
    try:
        lazy.sendall(request("big", size=size))  # (and reads nothing until the quick one has been served)
        for _ in range(20):
            assert ask(quick, "where") == "MainThread"
        answer, rest = read_answer(lazy)
        assert len(answer["result"]) == size and not rest
        assert ask(lazy, "where") == "MainThread"  # kept alive and back on the loop
    finally:
        lazy.close()
        quick.close()


def test_requests_in_pieces_and_pipelined_are_answered_in_order(service):
    sock = connect(service)
    try:
        whole = request("where")
        sock.sendall(whole[:20])
        time.sleep(0.05)  # let the loop see the first piece alone
        sock.sendall(whole[20:])
        answer, rest = read_answer(sock)
        assert answer["success"] and answer["result"] != "MainThread"  # came in pieces: the pool read it
        sock.sendall(request("big", size=1) + request("big", size=2) + request("big", size=3))
        got = []
        for _ in range(3):
            answer, rest = read_answer(sock, rest)
            got.append(answer["result"])
        assert got == ["x", "xx", "xxx"]
        assert ask(sock, "where") == "MainThread"
    finally:
        sock.close()


def test_bad_requests_on_the_loop_get_json_errors_and_the_service_goes_on(service):
    sock = connect(service)
    try:
        body = b"{not json"
        sock.sendall(HEAD.format(len(body)).encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
        assert data.startswith(b"HTTP/1.1 400")
        garbage = connect(service)
        garbage.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.recv(100).startswith(b"HTTP/1.1 400")
        garbage.close()
        other = connect(service)
        assert ask(other, "where") == "MainThread"
        other.close()
    finally:
        sock.close()


def test_kept_alive_connections_are_closed_after_the_keepalive_timeout(service):
    sock = connect(service)
    try:
        assert ask(sock, "where") == "MainThread"
        started = time.monotonic()
        sock.settimeout(30)
        assert sock.recv(10) == b""  # service_keepalive is 2 s
        assert 1 < time.monotonic() - started < 15
    finally:
        sock.close()


def test_many_connections_at_once_are_all_answered(service):
    errors: list[BaseException] = []

    def client() -> None:
        try:
            sock = connect(service)
            try:
                for _ in range(50):
                    assert ask(sock, "where") == "MainThread"
            finally:
                sock.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_the_worker_is_chosen_in_the_settings(tmp_path):
    from shmooze.errors import SettingsError
    from shmooze.serve import gunicorn_options
    from shmooze.settings import Settings

    ports = {"wsgi": 1, "loop": 2}
    loop = Settings({"ports": ports})
    assert gunicorn_options(loop, "loop")["worker_class"] == "shmooze.http.loopworker.LoopWorker"  # the default
    assert gunicorn_options(loop, "wsgi")["worker_class"] == "shmooze.gateway.lane.GatewayWorker"  # its own
    plain = Settings({"ports": ports, "service_worker": "gthread"})
    assert gunicorn_options(plain, "loop")["worker_class"] == "gthread"
    with pytest.raises(SettingsError, match="service_worker"):
        Settings({"ports": ports, "service_worker": "eventlet"})
