"""One socket write per answer under gunicorn (shmooze.http.onewrite)."""

from __future__ import annotations

from types import SimpleNamespace

from gunicorn.config import Config
from gunicorn.http import wsgi

from shmooze.http.onewrite import OneWriteResponse


class RecordingSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def response(sock: RecordingSocket, method: str = "POST") -> OneWriteResponse:
    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    return OneWriteResponse(req, sock, Config())


def test_a_small_answer_is_one_write_with_head_and_body():
    sock = RecordingSocket()
    resp = response(sock)
    body = b'{"success":true,"result":50}'
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    resp.write(body)
    resp.close()
    assert len(sock.writes) == 1
    head, _, sent_body = sock.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 28" in head and b"Connection: keep-alive" in head
    assert sent_body == body
    assert resp.headers_sent and resp.sent == len(body)


def test_other_answers_go_gunicorns_way():
    sock = RecordingSocket()
    resp = response(sock)
    resp.start_response("200 OK", [("Content-Length", "6")])
    resp.write(b"abc")  # the body in two pieces: head, then each piece
    resp.write(b"def")
    assert sock.writes[1:] == [b"abc", b"def"] and sock.writes[0].endswith(b"\r\n\r\n")
    sock = RecordingSocket()
    resp = response(sock)
    resp.start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
    resp.write(b"abc")
    resp.close()
    assert b"Transfer-Encoding: chunked" in sock.writes[0] and sock.writes[-1] == b"0\r\n\r\n"


def test_installed_for_gunicorns_workers(monkeypatch):
    from shmooze.http import onewrite

    monkeypatch.setattr(wsgi, "Response", wsgi.Response)
    onewrite.install()
    assert wsgi.Response is OneWriteResponse
