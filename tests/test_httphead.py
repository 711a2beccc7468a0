"""The HTTP/1.1 head parser (shmooze.http.heads), sans I/O: bytes in, a parsed head or a HeadError
that says what is wrong; and the access token's check (shmooze.access.AccessToken)."""

from __future__ import annotations

import pytest

from shmooze.access import AccessToken
from shmooze.http.heads import MAX_HEAD, HeadError, head_end, parse_request, parse_response
from shmooze.http.jsonapp import JSONHTTPError

REQUEST = (b"POST /queue HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
           b"Content-Length: 2\r\nAuthorization: Bearer MiXed  \r\nAccept: a\r\nAccept: b\r\n\r\n{}")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nShmooze-Proof: abc\r\n\r\n{}")


def request(data: bytes):
    return parse_request(data, head_end(data))


def response(data: bytes):
    return parse_response(data, head_end(data))


def test_a_request_head_is_parsed_with_its_fields_and_framing():
    head = request(REQUEST)
    assert (head.method, head.target, head.version) == (b"POST", b"/queue", b"1.1")
    assert head.fields[b"host"] == b"127.0.0.1:8080" and head.fields[b"content-type"] == b"application/json"
    assert head.fields[b"authorization"] == b"Bearer MiXed"  # the value as sent, without trailing whitespace
    assert head.fields[b"accept"] == b"a, b"  # a list field given twice is joined (RFC 9110 5.3)
    assert (head.content_length, head.chunked, head.body_length, head.keep_alive) == (2, False, 2, True)
    assert REQUEST[head_end(REQUEST) + 4:] == b"{}"


def test_keep_alive_follows_the_version_and_the_connection_options():
    assert not request(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").keep_alive
    assert request(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").connection == {b"keep-alive", b"close"}
    assert not request(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert request(b"GET / HTTP/1.1\r\n\r\n").body_length == 0
    assert request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").body_length is None


def test_the_head_end_is_found_within_the_limit():
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1  # not all there yet
    assert head_end(b"GET / HTTP/1.1\r\n\r\n") == 14
    with pytest.raises(HeadError, match="over 100 bytes"):
        head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * 200, 100)
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    with pytest.raises(HeadError, match="over"):
        parse_request(big, big.find(b"\r\n\r\n"))


@pytest.mark.parametrize(("data", "problem"), [
    (b"GET /\r\n\r\n", "not a request line"),
    (b"GET / HTTP/2.0\r\n\r\n", "not a request line"),
    (b"GET  / HTTP/1.1\r\n\r\n", "not a request line"),
    (b"GET /a b HTTP/1.1\r\n\r\n", "not a request line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "line 3 is an obsolete line folding"),
    (b"GET / HTTP/1.1\r\n\tfolded: x\r\n\r\n", "line 2 is an obsolete line folding"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace before its colon"),
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare CR or LF"),
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare CR or LF"),
    (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", "line 2 is not a field"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "line 2 is not a field"),
    (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", "line 2 is not a field"),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}", "content-length given twice"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n", "host given twice"),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "not a number of bytes"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", "not a number of bytes"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n", "not a number of bytes"),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "must end with chunked"),
], ids=lambda value: value[:40].decode("latin-1", "replace") if isinstance(value, bytes) else value)
def test_a_malformed_request_head_is_a_clear_error(data, problem):
    with pytest.raises(HeadError, match=problem):
        request(data)


def test_a_response_head_is_parsed():
    head = response(RESPONSE)
    assert (head.version, head.status, head.reason) == (b"1.1", 200, b"OK")
    assert head.fields[b"shmooze-proof"] == b"abc" and head.content_length == 2 and head.keep_alive
    assert response(b"HTTP/1.1 204\r\n\r\n").reason == b""  # no reason phrase (nor its space)
    ended = response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nrest")
    assert ended.content_length is None and not ended.chunked and not ended.keep_alive  # to the end
    assert response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").chunked
    assert not response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").chunked  # to the end (RFC 9112 6.3)


@pytest.mark.parametrize(("data", "problem"), [
    (b"HTTP/1.1 20 OK\r\n\r\n", "not a status line"),
    (b"ICY 200 OK\r\n\r\n", "not a status line"),
    (b"<html>\r\n\r\n", "not a status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "given twice"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\n", "not a number of bytes"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n  b\r\n\r\n", "obsolete line folding"),
])
def test_a_malformed_response_head_is_a_clear_error(data, problem):
    with pytest.raises(HeadError, match=problem):
        response(data)


def test_the_access_token_is_checked_in_one_place():
    token = AccessToken("S3cret-Tok")
    assert token.required and token.matches("S3cret-Tok")
    assert not token.matches("s3cret-tok") and not token.matches("S3cret-To") and not token.matches("")
    assert not token.matches("\ud800")  # a lone surrogate (from JSON) is a wrong token, not a crash
    assert token.bearer_matches("Bearer S3cret-Tok") and token.bearer_matches("bearer  S3cret-Tok ")
    for wrong in ("S3cret-Tok", "Basic S3cret-Tok", "Bearer", "Bearer ", "Bearer wrong", ""):
        assert not token.bearer_matches(wrong), wrong
    with pytest.raises(JSONHTTPError) as refused:
        token.check_bearer("Bearer wrong", "this command")
    assert refused.value.code == 401 and refused.value.extra_headers == {"WWW-Authenticate": "Bearer"}
    assert refused.value.message == "this command needs the access token (Authorization: Bearer TOKEN)"
    token.check_bearer("Bearer S3cret-Tok", "this command")  # (no error)
    none = AccessToken(None)
    assert not none.required and not none.matches("") and not none.bearer_matches("Bearer ")
