"""WebSockets served by gunicorn's gevent worker (``shmooze.http.websocket`` + ``tests/wsapps.py``)."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from wsproto.utilities import generate_accept_token

from shmooze.http.websocket import (
    HandshakeError,
    check_origin,
    is_websocket_request,
)
from shmooze.testing import WebSocketClient

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 1000
PAD_FDS = 1100  # held open on both sides so sockets get numbers above FD_SETSIZE (1024)
UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running gunicorn: its base URL, arbiter process and single worker's pid."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log_path: str):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"
        self.worker_pid = 0

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-4000:]

    def count(self) -> int:
        return int(requests.get(self.http + "/count", timeout=5).json()["count"])

    def wait_count(self, predicate, deadline_s: float = 10.0) -> int:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + deadline_s
        while True:
            count = self.count()
            if predicate(count) or time.monotonic() > deadline:
                return count
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    _raise_nofile(PAD_FDS + CONNECTIONS * 3)
    port = _free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="wsgunicorn-", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WSAPPS_PAD_FDS": str(PAD_FDS)}
    cmd = [
        sys.executable, "-m", "gunicorn",
        "-k", "gevent", "-w", "1",
        "--worker-connections", str(CONNECTIONS * 2),
        "--graceful-timeout", "2",
        "--no-control-socket",
        "-b", f"127.0.0.1:{port}",
        "tests.wsapps:app",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    srv = Server(port, proc, log_file.name)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"gunicorn exited:\n{srv.log()}"
            assert time.monotonic() < deadline, f"gunicorn not ready:\n{srv.log()}"
            try:
                srv.worker_pid = requests.get(srv.http + "/", timeout=1).json()["pid"]
                break
            except requests.RequestException:
                time.sleep(0.05)
        yield srv
    finally:
        workers = []
        try:
            workers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        for worker in alive:
            worker.kill()
        log_file.close()
        os.unlink(log_file.name)
        assert not psutil.pid_exists(proc.pid)
        assert not any(psutil.pid_exists(w.pid) for w in workers)


def test_one_gevent_worker(server: Server) -> None:
    children = psutil.Process(server.proc.pid).children()
    assert [c.pid for c in children] == [server.worker_pid]


def test_echo_round_trip(server: Server) -> None:
    with WebSocketClient.connect(server.ws, timeout=5) as ws:
        for text in ["hello", "", "héllo wörld ✓", "x" * 70000, '{"cmd": "ping"}']:
            ws.send(text)
            assert ws.receive(timeout=5) == text
        assert ws.receive(timeout=0.05) is None
        assert not ws.closed


def test_ping_is_answered(server: Server) -> None:
    with WebSocketClient.connect(server.ws, timeout=5) as ws:
        assert ws.ping(b"are you there", timeout=5)
        ws.send("after ping")
        assert ws.receive(timeout=5) == "after ping"


def test_close_handshake(server: Server) -> None:
    before = server.count()
    ws = WebSocketClient.connect(server.ws, timeout=5)
    ws.send("one")
    assert ws.receive(timeout=5) == "one"
    assert server.wait_count(lambda n: n == before + 1) == before + 1
    ws.close()
    assert ws.closed
    assert ws.close_code == 1000  # the server answered our close frame
    assert ws.receive(timeout=1) is None
    assert server.wait_count(lambda n: n == before) == before  # handler returned


def test_server_initiated_close(server: Server) -> None:
    ws = WebSocketClient.connect(server.http + "/bye", timeout=5)
    assert ws.receive(timeout=5) == "bye"
    assert ws.receive(timeout=5) is None
    assert (ws.close_code, ws.close_reason) == (4000, "done")
    ws.close()


def test_handler_error_closes_with_1011(server: Server) -> None:
    with WebSocketClient.connect(server.http + "/boom", timeout=5) as ws:
        ws.send("go")
        assert ws.receive(timeout=5) is None
        assert ws.close_code == 1011
    assert requests.get(server.http + "/", timeout=5).status_code == 200


def test_client_reads_frames_sent_with_the_101() -> None:
    """Frames in the same segment as the handshake answer are not lost."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answer: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request).group(1)  # type: ignore[union-attr]
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + generate_accept_token(key)
                + b"\r\n\r\n\x81\x05early\x88\x02\x03\xe8"
            )
            answer.append(conn.recv(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        ws = WebSocketClient.connect(f"ws://127.0.0.1:{port}/", timeout=5)
        assert ws.receive(timeout=5) == "early"
        assert ws.receive(timeout=5) is None
        assert ws.close_code == 1000
        thread.join(timeout=5)
        assert answer and answer[0][:1] == b"\x88"  # the client answered the close frame
    finally:
        listener.close()


def test_oversize_message_closed_with_1009(server: Server) -> None:
    ws = WebSocketClient.connect(server.ws, timeout=10)
    ws.send("x" * (1 << 20) + "!")
    assert ws.receive(timeout=10) is None
    assert ws.closed
    assert ws.close_code == 1009
    ws.close()
    # a message of exactly the limit is fine
    with WebSocketClient.connect(server.ws, timeout=10) as ok:
        ok.send("y" * (1 << 20))
        assert ok.receive(timeout=10) == "y" * (1 << 20)


def test_bad_origin_gets_403_json(server: Server) -> None:
    r = requests.get(
        server.http + "/ws", headers={**UPGRADE_HEADERS, "Origin": "http://evil.example"}, timeout=5
    )
    assert r.status_code == 403
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["success"] is False and r.json()["error"]
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(server.ws, origin="http://evil.example", timeout=5)
    assert info.value.status == 403
    for origin in ["http://allowed.example", f"http://127.0.0.1:{server.port}", None]:
        with WebSocketClient.connect(server.ws, origin=origin, timeout=5) as ws:
            ws.send("ok")
            assert ws.receive(timeout=5) == "ok"


def test_bad_handshake_gets_400_json(server: Server) -> None:
    r = requests.get(server.http + "/ws", timeout=5)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["success"] is False
    r = requests.get(
        server.http + "/ws", headers={**UPGRADE_HEADERS, "Sec-WebSocket-Version": "8"}, timeout=5
    )
    assert r.status_code == 400 and "Version" in r.json()["error"]


def test_plain_http_on_the_same_worker(server: Server) -> None:
    with WebSocketClient.connect(server.ws, timeout=5) as ws:
        ws.send("before")
        assert ws.receive(timeout=5) == "before"
        with requests.Session() as session:  # keep-alive HTTP next to the websocket
            for _ in range(3):
                r = session.get(server.http + "/", timeout=5)
                assert r.status_code == 200
                assert r.json()["pid"] == server.worker_pid
        ws.send("after")
        assert ws.receive(timeout=5) == "after"


def test_thousand_connections_get_a_broadcast(server: Server) -> None:
    start = time.monotonic()
    base = server.count()
    clients: list[WebSocketClient] = []
    padding = [open(os.devnull, "rb") for _ in range(PAD_FDS)]
    try:
        for _ in range(CONNECTIONS):
            clients.append(WebSocketClient.connect(server.ws, timeout=10))
        assert server.wait_count(lambda n: n >= base + CONNECTIONS) >= base + CONNECTIONS
        text = f"broadcast {uuid.uuid4()}"
        r = requests.post(server.http + "/broadcast", data=text.encode(), timeout=20)
        assert r.json()["sent"] >= CONNECTIONS
        got = [ws.receive(timeout=10) for ws in clients]
        assert got.count(text) == CONNECTIONS
        assert psutil.Process(server.proc.pid).children() == [psutil.Process(server.worker_pid)]
        # Above FD_SETSIZE (the padding), but for the few a collected object of an earlier test may free meanwhile.
        assert sum(ws.fileno() > 1024 for ws in clients) >= CONNECTIONS - 16
        worker_fds = psutil.Process(server.worker_pid).num_fds()
        assert worker_fds > PAD_FDS + CONNECTIONS
    finally:
        for ws in clients:
            ws.close()
        for f in padding:
            f.close()
    assert server.wait_count(lambda n: n == base) == base
    assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "a.example", None, True),
        ("http://a.example", "a.example", None, True),
        ("https://a.example", "a.example:443", None, False),  # https page, plain-http gateway: foreign
        ("https://a.example", "a.example:443", ["https://a.example"], True),
        ("http://a.example:8080", "a.example:8080", None, True),
        ("http://a.example:8080", "a.example:9090", None, False),
        ("http://evil.example", "a.example", None, False),
        ("http://evil.example", "a.example", ["http://evil.example"], True),
        ("http://evil.example:81", "a.example", ["evil.example:81"], True),
        ("https://evil.example", "a.example", ["http://evil.example"], False),
        ("null", "a.example", None, False),
        ("http://x.example", "a.example", ["*"], True),
        ("http://a.example:443", "a.example:443", None, True),
    ],
)
def test_check_origin(origin: str | None, host: str, allowed: list[str] | None, ok: bool) -> None:
    environ = {"HTTP_HOST": host}
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    assert check_origin(environ, allowed) is ok


@pytest.mark.parametrize(("origin", "scheme", "ok"), [
    ("https://a.example", "https", True),
    ("http://a.example:443", "https", False),  # an http page may not drive an https gateway
    ("http://a.example", "http", True),
    ("https://a.example:80", "http", False),  # exactly: a TLS proxy's origin goes in allowed_origins
    ("https://a.example", "http", False),
])
def test_check_origin_compares_the_scheme(origin: str, scheme: str, ok: bool) -> None:
    host = "a.example:443" if scheme == "https" else "a.example:80"
    assert check_origin({"HTTP_HOST": host, "HTTP_ORIGIN": origin, "wsgi.url_scheme": scheme}) is ok


def test_is_websocket_request() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "HTTP_UPGRADE": "WebSocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
    }
    assert is_websocket_request(environ)
    assert not is_websocket_request({**environ, "REQUEST_METHOD": "POST"})
    assert not is_websocket_request({"REQUEST_METHOD": "GET"})
