"""The gateway's fast lane (shmooze.gateway.lane): plain command requests answered without gunicorn's
per-request work, everything else left to gunicorn and the WSGI app on the same connection.

Unit: which heads the lane takes. Live (``shmooze serve wsgi`` under gunicorn, raw sockets): the
lane's answers and errors are the WSGI path's (token, host, body limit, lost service), requests it
leaves (GET, chunked, Expect, a head in pieces) are answered on the same connection, which comes
back to the lane after them; pipelined requests, bodies in pieces and ``Connection: close``; a body
trickled in is cut (408, closed) at one deadline for all of it, a slow one within the rate is served.
"""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from shmooze.gateway.lane import parse_head
from shmooze.http.forward import RestartingTimer
from tests.helpers import Stack

TOKEN = "Lane-Tok-7Q"
BODY = b'{"cmd": "add", "args": {"a": 2, "b": 3}}'
#: Small body limits, so that a trickled body is cut within seconds (a body of 300 bytes: 5 s).
BODY_TIMEOUT = 2.0
BODY_MIN_RATE = 100
#: A short forward timeout, that several slow commands on one kept-alive connection add up past.
FORWARD_TIMEOUT = 2.0


def head(path: str = "/sample", **headers: str) -> bytes:
    fields = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(BODY))}
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


def parsed(data: bytes):
    return parse_head(data, data.find(b"\r\n\r\n"))


def test_plain_heads_are_taken_with_their_headers_as_sent():
    got = parsed(head(Authorization="Bearer MiXed-Case  ", Origin="http://127.0.0.1", Connection="close"))
    assert got is not None
    assert (got.path, got.host, got.content_type, got.length) == (b"/sample", b"127.0.0.1", b"application/json",
                                                                  len(BODY))
    assert got.authorization == b"Bearer MiXed-Case" and got.origin == b"http://127.0.0.1" and got.close
    assert parsed(head(Content_Type="Application/JSON; charset=utf-8")).content_type == b"application/json"


@pytest.mark.parametrize("data", [
    head().replace(b"POST", b"GET"),
    head().replace(b"HTTP/1.1", b"HTTP/1.0"),
    head(Transfer_Encoding="chunked"),
    head(Expect="100-continue"),
    head(Upgrade="websocket", Connection="Upgrade"),
    head(TE="trailers"),
    head(Content_Length=None),
    head(Content_Length="-1"),
    head(Content_Length="1e3"),
    head().replace(b"Host:", b"Host :"),  # whitespace before the colon
    head().replace(b"\r\nHost", b"\r\n Host"),  # an obsolete line folding
    head().replace(b"127.0.0.1", b"127.0.0.1\x00"),  # a control character
    head().replace(b"\r\nHost", b"\r\nhost: evil.example\r\nHost"),  # a repeated header
    head().replace(b"Content-Length", b"Content-Length: 5\r\nContent-Length"),
    head(path="/sample?x=1").replace(b"?", b" "),  # a malformed request line
    head(X_Big="a" * 9000),
], ids=lambda d: d[:60].decode("latin-1", "replace"))
def test_anything_else_is_left_to_gunicorn(data):
    assert parsed(data) is None


def test_a_restarted_timer_gives_each_wait_its_full_time():
    """(gevent's Timeout, started again, ran only for what its earlier waits had left: the third of
    these waits timed out after 0.1 s.)"""
    import gevent

    timer = RestartingTimer(0.5, TimeoutError)
    for _ in range(4):  # 1.2 s of waits in all, each within the 0.5 s
        timer.start()
        try:
            gevent.sleep(0.3)
        finally:
            timer.cancel()
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(TimeoutError):
            gevent.sleep(5)
    finally:
        timer.cancel()
    assert 0.45 < time.monotonic() - started < 2


# -- live ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("lane"), {"sample": "tests.sample_service:Sample"}, down=["lost"],
               access_token=TOKEN, open_commands=["add"], max_body_bytes=4096,
               body_timeout=BODY_TIMEOUT, body_min_rate=BODY_MIN_RATE, forward_timeout=FORWARD_TIMEOUT) as running:
        yield running


class Conn:
    """One raw client connection to the gateway."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names) and body (by Content-Length or chunked)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._more()
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    self._more()
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    break
        else:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self._more()
            body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the gateway closes the connection (end of stream within the timeout)."""
        self.sock.settimeout(10)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(stack):
    c = Conn(stack.ports["wsgi"])
    yield c
    c.close()


def command(cmd: str, path: str = "/sample", **headers: str) -> bytes:
    body = json.dumps({"cmd": cmd}).encode()
    return head(path, Content_Length=str(len(body)), **headers) + body


def test_an_answer_in_the_lane_is_the_services_own(conn):
    conn.send(head() + BODY)
    status, headers, body = conn.answer()
    assert status == 200 and json.loads(body) == {"success": True, "result": 5}
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(body)) and "date" in headers


def test_pipelined_requests_and_a_body_in_pieces(conn):
    conn.send((head() + BODY) * 3)
    assert [conn.answer()[0] for _ in range(3)] == [200, 200, 200]
    conn.send(head() + BODY[:10])  # the rest of the body in a second segment (TCP_NODELAY)
    conn.send(BODY[10:])
    status, _, body = conn.answer()
    assert status == 200 and json.loads(body)["result"] == 5


def test_requests_left_to_gunicorn_share_the_connection_with_the_lane(conn):
    conn.send(head() + BODY)
    assert conn.answer()[0] == 200
    conn.send(b"GET /settings.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, _, body = conn.answer()
    assert status == 200 and isinstance(json.loads(body), dict)
    chunked = head(Content_Length=None, Transfer_Encoding="chunked")
    conn.send(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    status, _, body = conn.answer()
    assert status == 200 and json.loads(body)["result"] == 5
    conn.send(head()[:20])  # a head in pieces
    conn.send(head()[20:] + BODY)
    assert conn.answer()[0] == 200
    conn.send(head() + BODY)  # and back in the lane
    status, headers, _ = conn.answer()
    assert status == 200 and headers.get("connection") == "keep-alive"


def test_the_token_is_checked_in_the_lane(conn):
    conn.send(command("echo"))
    status, headers, body = conn.answer()
    assert status == 401 and headers["www-authenticate"] == "Bearer" and not json.loads(body)["success"]
    conn.send(command("echo", Authorization="Bearer " + TOKEN.lower()))
    assert conn.answer()[0] == 401  # compared as sent, case and all
    conn.send(command("echo", Authorization="Bearer " + TOKEN))
    assert conn.answer()[0] == 200
    conn.send(command("status"))  # read-only: open
    assert conn.answer()[0] == 200


def test_errors_are_the_wsgi_paths(stack, conn):
    conn.send(head(Host="evil.example") + BODY)
    status, _, body = conn.answer()
    assert status == 400 and "allowed_hosts" in json.loads(body)["error"]
    assert conn.closed()
    opened: list[Conn] = []

    def fresh() -> Conn:
        opened.append(Conn(stack.ports["wsgi"]))
        return opened[-1]

    try:
        c = fresh()
        c.send(head(Origin="http://evil.example") + BODY)
        assert c.answer()[0] == 403
        c = fresh()
        c.send(head(Content_Length="5000"))
        status, _, body = c.answer()
        assert status == 413 and "4096" in json.loads(body)["error"] and c.closed()
        c = fresh()
        c.send(head(Content_Type="text/plain") + BODY)
        assert c.answer()[0] == 415
        c.send(command("status", path="/lost"))
        status, _, body = c.answer()
        assert status == 502 and "lost" in json.loads(body)["error"]
        port = stack.ports["wsgi"]
        c.send(head(Origin=f"http://127.0.0.1:{port}", Host=f"127.0.0.1:{port}") + BODY)
        assert c.answer()[0] == 200  # its own origin
    finally:
        for c in opened:
            c.close()


def test_connection_close_is_honoured(conn):
    conn.send(head(Connection="close") + BODY)
    status, headers, _ = conn.answer()
    assert status == 200 and headers["connection"] == "close" and conn.closed()


def padded(size: int) -> bytes:
    """A command body of ``size`` bytes (the JSON padded with spaces)."""
    return BODY + b" " * (size - len(BODY))


def test_a_trickled_body_is_cut_at_one_deadline_for_all_of_it(conn):
    size = 300
    budget = BODY_TIMEOUT + size / BODY_MIN_RATE  # what read_body gives the whole body: 5 s
    body = padded(size)
    conn.send(head(Content_Length=str(size)) + body[:1])
    started = time.monotonic()
    sent = 1
    # One byte every 50 ms (20 bytes/s, a fifth of the minimum rate): all of it would take 15 s. Each
    # byte arrives long before the budget, so a budget that restarts with every recv never runs out.
    while not select.select([conn.sock], [], [], 0.05)[0]:
        assert time.monotonic() - started < budget + 5, f"no answer after {sent} bytes trickled"
        conn.send(body[sent:sent + 1])
        sent += 1
    status, headers, answer = conn.answer()
    took = time.monotonic() - started
    assert status == 408 and "did not arrive in time" in json.loads(answer)["error"]
    assert headers["connection"] == "close" and conn.closed()
    assert budget - 0.5 < took < budget + 3, f"cut after {took:.1f} s, the budget is {budget:g} s"
    assert sent < size


def test_a_slow_body_within_the_rate_is_served(conn):
    size = 300  # 5 s allowed; sent in three pieces over about 2 s
    body = padded(size)
    conn.send(head(Content_Length=str(size)))
    for i in range(3):
        assert not select.select([conn.sock], [], [], 1.0 if i else 0)[0], "answered before the body was whole"
        conn.send(body[i * 100:(i + 1) * 100])
    status, headers, answer = conn.answer()
    assert status == 200 and json.loads(answer) == {"success": True, "result": 5}
    assert headers["connection"] == "keep-alive"


def test_slow_commands_on_one_connection_each_get_the_whole_forward_timeout(conn):
    """Commands of 0.8 s, one after the other on one kept-alive connection (to the gateway and from it
    to the service): 4 s in all, twice the forward timeout, and each is answered."""
    for _ in range(5):
        conn.send(command_with("wait_gate", {"timeout": 0.8}, Authorization="Bearer " + TOKEN))
        status, _, answer = conn.answer()
        assert status == 200 and json.loads(answer) == {"success": True, "result": False}


def command_with(cmd: str, args: dict, **headers: str) -> bytes:
    body = json.dumps({"cmd": cmd, "args": args}).encode()
    return head(Content_Length=str(len(body)), **headers) + body
