"""Fuzzing over real sockets: raw HTTP/1.1 byte streams against the two parts of shmooze that parse
real traffic themselves, a service's loop worker (shmooze.http.loopworker) and the gateway's fast lane
(shmooze.gateway.lane), each in a real process (``shmooze serve``: a service under the loop worker and
a gateway in front of it).

Valid streams: random JSON command bodies (random commands and arguments, batches, unicode, deep
nesting, huge numbers) in requests written in every way HTTP/1.1 allows (header case and spacing,
extra headers, chunked bodies, ``Expect: 100-continue``, HTTP/1.0, keep-alive or close), several
pipelined in one send and the whole split at random bytes over several sends. Every request is
answered, in order, with what the same body gets in a plain request; the connection is kept or
closed as asked.

Malformed streams: valid requests, then one broken (its request line, Content-Length missing, bad,
repeated or conflicting, chunk sizes, a header without a colon, obs-fold, NUL bytes, bare LF, an
over-long head, a body shorter or longer than its Content-Length, a foreign Host or an Origin,
odd Expect and Upgrade headers...), then more valid requests, in random pieces; then the client
half-closes. The valid requests before the broken one get their answers, every answer at all is
JSON with ``success`` (never HTML, never a traceback, never a 500), and the server closes the
connection. After every example the service and the gateway answer a normal request, and no
process logs a traceback. The number of streams tried is printed at the end of the module.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import time
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Stack, report_line

#: Streams tried per target and kind; KINDS: what broke the malformed ones.
COUNTS: collections.Counter[str] = collections.Counter()
KINDS: collections.Counter[str] = collections.Counter()
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
#: Each target: the process's name in the stack and the command path on it.
TARGETS = {"service": ("fuzz", "/"), "gateway": ("wsgi", "/fuzz")}
#: How long one stream may take to be answered (and its connection closed), loaded machine included.
ANSWER_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    with Stack(tmp_path_factory.mktemp("fuzzsock"), {"fuzz": "tests.socket_service:SocketFuzz"},
               service_worker="loop") as running:
        yield running
    report_line(request, f"fuzz streams tried over sockets (test_fuzz_sockets): {sum(COUNTS.values())} total; "
                + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())) + "; broken by: "
                + ", ".join(f"{k}={v}" for k, v in sorted(KINDS.items())))


# -- reading answers -------------------------------------------------------------------------


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*")


class Reader:
    """The answers on one client connection, in order, under one deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.deadline = time.monotonic() + ANSWER_TIMEOUT

    def _more(self) -> bool:
        """Read more; False at the end of the stream (a close or a reset)."""
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        assert left > 0, f"no answer (nor close) within {ANSWER_TIMEOUT} s; read so far: {self.buf[:300]!r}"
        self.sock.settimeout(left)
        try:
            piece = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            piece = b""
        except socket.timeout:
            raise AssertionError(f"no answer (nor close) within {ANSWER_TIMEOUT} s; read so far: "
                                 f"{self.buf[:300]!r}") from None
        if not piece:
            self.eof = True
            return False
        self.buf += piece
        return True

    def _need(self, size: int) -> None:
        while len(self.buf) < size:
            assert self._more(), f"the answer was cut: {self.buf[:300]!r}"

    def answer(self) -> Answer | None:
        """The next final answer (1xx interim answers skipped); None when the server closed instead."""
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._more():
                    assert not self.buf, f"the connection closed in the middle of an answer: {self.buf[:300]!r}"
                    return None
            raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = raw.split(b"\r\n")
            status = _STATUS.fullmatch(lines[0])
            assert status is not None, f"not an HTTP answer: {raw[:300]!r}"
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.decode("latin-1").partition(":")
                assert colon and name == name.strip(), f"a malformed header in the answer: {raw[:300]!r}"
                headers[name.lower()] = value.strip()
            code = int(status.group(1))
            if code < 200:
                continue
            return Answer(code, headers, self._body(headers))

    def _body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    assert self._more(), "a chunked answer was cut"
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                self._need(size + 2)
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    return body
        length = int(headers["content-length"])  # (every answer here has one, or is chunked)
        self._need(length)
        body, self.buf = self.buf[:length], self.buf[length:]
        return body

    def closed(self) -> bool:
        """Whether the server closes the connection now (nothing more is sent)."""
        return not self.buf and not self._more()


def check(answer: Answer) -> dict | list:
    """An answer as the SPEC has it: JSON with ``success`` (a list of such for a batch), never HTML nor a
    traceback, never an internal error (gunicorn's 501 for a transfer coding it does not know aside)."""
    assert answer.headers.get("content-type") == "application/json", answer
    assert b"Traceback" not in answer.body and b"<html" not in answer.body.lower(), answer
    assert answer.status < 500 or answer.status == 501, answer
    reply = json.loads(answer.body)
    for item in reply if isinstance(reply, list) else [reply]:
        assert isinstance(item, dict) and isinstance(item.get("success"), bool), answer
        if not item["success"]:
            assert isinstance(item.get("error"), str) and item["error"], answer
    if answer.status != 200:
        assert isinstance(reply, dict) and reply["success"] is False, answer
    return reply


# -- writing requests --------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def plain(path: str, port: int, body: bytes, close: bool = False) -> bytes:
    """A plain, well-formed command request."""
    last = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{last}\r\n").encode() + body


def ask(port: int, path: str, body: bytes) -> Answer:
    """A plain request's answer, on a connection of its own."""
    with connect(port) as sock:
        sock.sendall(plain(path, port, body, close=True))
        answer = Reader(sock).answer()
    assert answer is not None, f"no answer to {body[:200]!r}"
    return answer


class Target:
    """A process under test: where to send commands, and the plain answer to each body (the reference)."""

    def __init__(self, stack: Stack, kind: str):
        name, self.path = TARGETS[kind]
        self.port = stack.ports[name]
        self.kind = kind
        self._references: dict[bytes, tuple[int, Any]] = {}

    def reference(self, body: bytes) -> tuple[int, Any]:
        known = self._references.get(body)
        if known is None:
            answer = ask(self.port, self.path, body)
            known = self._references[body] = (answer.status, check(answer))
        return known

    def still_serving(self) -> None:
        answer = ask(self.port, self.path, b'{"cmd": "echo", "args": {"still": "serving"}}')
        assert (answer.status, json.loads(answer.body)) == (200, {"success": True, "result": {"still": "serving"}})


@pytest.fixture(params=sorted(TARGETS))
def target(request, stack) -> Target:
    return Target(stack, request.param)


# -- strategies: bodies ------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 300), max_value=10 ** 300)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
commands = st.one_of(
    st.builds(lambda args: {"cmd": "echo", "args": args}, arguments),  # quick: on the loop
    st.builds(lambda args: {"cmd": "echo_pool", "args": args}, arguments),  # read-only: on a pool thread
    st.builds(lambda a, b: {"cmd": "add", "args": {"a": a, "b": b}}, st.integers(), st.integers() | json_values),
    st.fixed_dictionaries({"cmd": st.text(max_size=10) | json_values}, optional={"args": arguments | json_values}),
    json_values,
)


def nested(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + "}" * depth
    return f'{{"cmd": "echo", "args": {{"x": {inner}}}}}'.encode()


def huge_number(digits: int, tail: str) -> bytes:
    return f'[{{"cmd": "echo", "args": {{"n": {"9" * digits}{tail}}}}}, {{"cmd": "echo_pool"}}]'.encode()


bodies = st.one_of(
    st.builds(lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only).encode(),
              commands | st.lists(commands, max_size=5), st.booleans()),
    st.builds(nested, st.integers(min_value=1, max_value=1200), st.sampled_from("[{")),
    st.builds(huge_number, st.integers(min_value=1, max_value=5000), st.sampled_from(["", ".5", "e-400", "E+400"])),
    st.binary(max_size=40),  # not JSON (mostly): a 400 with a JSON error
)


# -- strategies: valid requests ----------------------------------------------------------------


class Request(NamedTuple):
    data: bytes
    body: bytes
    closes: bool  # the server closes the connection after answering it


CONTENT_TYPES = ["application/json", "text/json", "application/json; charset=utf-8", "Application/JSON"]
EXTRA_HEADERS = [("User-Agent", "fuzz/1.0"), ("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"),
                 ("X-Request-Id", "a1b2c3"), ("Cookie", "a=b; c=d"), ("Cache-Control", "no-cache"),
                 ("Accept-Language", "fr-CH, fr;q=0.9"), ("Referer", "http://127.0.0.1/")]


def header_name(name: str, case: str) -> str:
    return {"lower": name.lower(), "upper": name.upper(), "as is": name}[case]


@st.composite
def requests(draw, target: Target) -> Request:
    """A valid command request, written in one of the ways HTTP/1.1 allows."""
    body = draw(bodies)
    version = draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0"]))
    # (not "close, keep-alive": gunicorn reads a Connection header as one value, the lane as tokens)
    connection = draw(st.sampled_from([None, None, "keep-alive", "close", "Keep-Alive", "Close"]))
    chunked = version == "HTTP/1.1" and draw(st.booleans())
    fields = [("Host", f"127.0.0.1:{target.port}"), ("Content-Type", draw(st.sampled_from(CONTENT_TYPES)))]
    if chunked:
        fields.append(("Transfer-Encoding", "chunked"))
    else:
        fields.append(("Content-Length", str(len(body))))
    if connection is not None:
        fields.append(("Connection", connection))
    if version == "HTTP/1.1" and draw(st.integers(0, 5)) == 0:
        fields.append(("Expect", "100-continue"))
    fields += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=3, unique=True))
    fields = draw(st.permutations(fields))
    case = draw(st.sampled_from(["as is", "lower", "upper"]))
    space, trail = draw(st.sampled_from([" ", "", "\t", "  "])), draw(st.sampled_from(["", " ", "\t"]))
    head = f"POST {target.path} {version}\r\n" + "".join(
        f"{header_name(k, case)}:{space}{v}{trail}\r\n" for k, v in fields) + "\r\n"
    if chunked:
        cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=3))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        framed = body
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    closes = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    return Request(head.encode("utf-8") + framed, body, closes)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    at = sorted({c % len(data) for c in cuts} - {0})
    return [data[a:b] for a, b in zip([0, *at], [*at, len(data)])]


def send(sock: socket.socket, parts: list[bytes], pause: float) -> None:
    """Send each part on its own (a pause between them lets the server see them apart)."""
    for i, part in enumerate(parts):
        if i and pause:
            time.sleep(pause)  # (part of the input: how the bytes arrive, not a wait for a condition)
        try:
            sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server closed already (after an error): what it answered is checked


splits = st.lists(st.integers(min_value=1, max_value=1 << 30), max_size=5)
pauses = st.sampled_from([0.0, 0.0, 0.001, 0.005])


# -- valid streams -------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), cuts=splits, pause=pauses)
def test_valid_streams_are_answered_in_order_as_plain_requests_are(target, data, cuts, pause):
    COUNTS[f"{target.kind}:valid"] += 1
    stream = data.draw(st.lists(requests(target), min_size=1, max_size=4))
    answered = []
    for request in stream:  # the server answers up to the first request that closes the connection
        answered.append(request)
        if request.closes:
            break
    with connect(target.port) as sock:
        send(sock, pieces(b"".join(r.data for r in stream), cuts), pause)
        reader = Reader(sock)
        for i, request in enumerate(answered):
            answer = reader.answer()
            assert answer is not None, f"request {i} of {len(stream)} not answered: {request.data[:300]!r}"
            assert (answer.status, check(answer)) == target.reference(request.body), request.data[:300]
            wanted = "close" if request.closes else "keep-alive"
            assert answer.headers.get("connection", wanted).lower() == wanted, (answer.headers, request.data[:300])
        if answered[-1].closes:
            assert reader.closed(), "the connection stayed open after Connection: close"
        else:
            sock.sendall(plain(target.path, target.port, b'{"cmd": "echo", "args": {"after": 1}}'))
            answer = reader.answer()
            assert answer is not None and json.loads(answer.body) == {"success": True, "result": {"after": 1}}
    target.still_serving()


# -- malformed streams ---------------------------------------------------------------------------


def replace_line(data: bytes, index: int, line: bytes) -> bytes:
    """The request with its head line ``index`` (0: the request line) replaced (b"": removed)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    lines[index % len(lines)] = line
    return b"\r\n".join(x for x in lines if x) + b"\r\n\r\n" + body


def with_fields(data: bytes, *fields: bytes, drop: bytes = b"") -> bytes:
    """The request with header lines added after its request line (and those named ``drop`` removed)."""
    head, _, body = data.partition(b"\r\n\r\n")
    first, *rest = head.split(b"\r\n")
    if drop:
        rest = [x for x in rest if not x.lower().startswith(drop.lower() + b":")]
    return b"\r\n".join([first, *fields, *rest]) + b"\r\n\r\n" + body


# (GET /fuzz, not GET /: the gateway's / is its page, rightly HTML.)
BAD_REQUEST_LINES = [b"", b"POST", b"POST /", b"POST / HTTP/1.1 x", b"POST / HTTP/2.0", b"POST / HTTP/1.12",
                     b"POST / http/1.1", b"post / HTTP/1.1", b"POST\t/\tHTTP/1.1", b"POST  / HTTP/1.1",
                     b" POST / HTTP/1.1", b"POST / HTTP/1.1 ", b"GET /fuzz HTTP/1.1", b"PUT /fuzz HTTP/1.1",
                     b"POST /fuzz?x=1 HTTP/1.1", b"POST /%00 HTTP/1.1", b"POST /a b HTTP/1.1", b"POST * HTTP/1.1",
                     b"POST http://127.0.0.1/fuzz HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                     b"PRI * HTTP/2.0", b"POST /" + b"a" * 5000 + b" HTTP/1.1", b"POST / HTTP/1.1\x00",
                     b"P\xc3\xb6ST / HTTP/1.1", b"POST /\xff HTTP/1.1"]
BAD_LENGTHS = [b"-1", b"abc", b"1e3", b"0x10", b"+12", b"", b" ", b"99999999999999999999999", b"12, 12", b"1 2",
               b"\xd9\xa1\xd9\xa2", b"0" * 30 + b"5", b"4294967296", b"18446744073709551617"]
BAD_CHUNKS = [b"zz\r\n", b"-1\r\n", b"fffffffffffffffffff\r\n", b"\r\n", b"1;\x01\r\n", b"0x10\r\n", b"10 \r\n",
              b"1\n", b"ffff\r\n", b"1;a=\"b\r\n", b"+5\r\n", b"5\r\nabc\r\n"]
TRANSFER_CODINGS = [b"chunked, chunked", b"gzip", b"identity", b"Chunked", b"chunked\x00", b"gzip, chunked",
                    b"chunked, gzip", b"xchunked", b" chunked"]
ODD_FIELDS = [b"X-Foo bar", b"X-Foo", b":", b": empty name", b"X Foo: bar", b"X-Foo : bar", b"X-F\x00o: bar",
              b"X-Foo: b\x00r", b"X-Foo: \x7f", b"X-Foo: bar\rbaz", b"\xff\xfe: x", b"Host: evil.example",
              b"Host: 127.0.0.1, 127.0.0.1", b"Origin: http://evil.example", b"Origin: null",
              b"Expect: something-else", b"Expect: 100-continue, x", b"Upgrade: websocket",
              b"Connection: Upgrade", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", b"TE: trailers",
              b"Trailer: X-Foo", b"Connection: nonsense", b"Content-Type: text/plain",
              b"Content-Type: application/json", b"Transfer-Encoding: chunked", b"Content-Length: 0",
              b"Authorization: Bearer x", b"Proxy-Connection: keep-alive", b"X-Forwarded-For: 10.0.0.1",
              b"Forwarded: for=1.2.3.4", b"SCRIPT_NAME: /x", b"X-Forwarded-Proto: https"]


@st.composite
def malformed(draw, target: Target) -> bytes:
    """One broken request (random choices of what breaks it)."""
    request = draw(requests(target)).data
    head_lines = request.partition(b"\r\n\r\n")[0].count(b"\r\n") + 1
    kind = draw(st.sampled_from(["request line", "length", "lengths", "length and chunked", "chunk", "coding",
                                 "field", "fold", "nul", "bare lf", "long head", "many fields", "short body",
                                 "long body", "flip", "no length"]))
    KINDS[kind] += 1
    line = draw(st.integers(0, head_lines - 1))
    plain_body = draw(bodies)
    plain_req = plain(target.path, target.port, plain_body)
    if kind == "request line":
        return replace_line(request, 0, draw(st.sampled_from(BAD_REQUEST_LINES) | st.binary(min_size=1, max_size=30)))
    if kind == "length":
        return with_fields(plain_req, b"Content-Length: " + draw(st.sampled_from(BAD_LENGTHS)), drop=b"Content-Length")
    if kind == "lengths":
        n = len(plain_body)
        other = draw(st.sampled_from([n, n + 1, max(n - 1, 0), 0]))
        return with_fields(plain_req, b"Content-Length: %d" % other)
    if kind == "length and chunked":
        return with_fields(plain_req, b"Transfer-Encoding: chunked")
    if kind == "chunk":
        head = plain_req.partition(b"\r\n\r\n")[0]
        head = re.sub(rb"Content-Length: \d+", b"Transfer-Encoding: chunked", head)
        chunks = draw(st.sampled_from(BAD_CHUNKS)) + plain_body + draw(st.sampled_from([b"\r\n0\r\n\r\n", b"0\r\n\r\n",
                                                                                         b"\r\n", b"\r\n0\r\n"]))
        if draw(st.booleans()):  # a good chunk first
            chunks = b"%x\r\n%s\r\n" % (len(plain_body), plain_body) + chunks
        return head + b"\r\n\r\n" + chunks
    if kind == "coding":
        return with_fields(plain_req, b"Transfer-Encoding: " + draw(st.sampled_from(TRANSFER_CODINGS)),
                           drop=draw(st.sampled_from([b"Content-Length", b"X-None"])))
    if kind == "field":
        fields = draw(st.lists(st.sampled_from(ODD_FIELDS), min_size=1, max_size=3))
        return with_fields(plain_req, *fields)
    if kind == "fold":
        head, _, rest = request.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        lines.insert(max(line, 1), draw(st.sampled_from([b" folded", b"\tx", b" ", b"\t"])))
        return b"\r\n".join(lines) + b"\r\n\r\n" + rest
    if kind == "nul":
        at = draw(st.integers(0, len(request)))
        return request[:at] + b"\x00" + request[at:]
    if kind == "bare lf":
        head, _, rest = request.partition(b"\r\n\r\n")
        return head.replace(b"\r\n", b"\n") + b"\n\n" + rest
    if kind == "long head":
        size = draw(st.sampled_from([4000, 8190, 8200, 9000, 20000, 70000]))
        return with_fields(plain_req, b"X-Long: " + b"a" * size)
    if kind == "many fields":
        count = draw(st.sampled_from([99, 101, 150, 1000]))
        return with_fields(plain_req, *[b"X-F%d: v" % i for i in range(count)])
    if kind == "short body":
        missing = draw(st.integers(1, 50))
        return with_fields(plain_req, b"Content-Length: %d" % (len(plain_body) + missing), drop=b"Content-Length")
    if kind == "long body":
        return plain_req + draw(st.binary(min_size=1, max_size=40))
    if kind == "no length":
        return with_fields(plain_req, drop=b"Content-Length")
    at = draw(st.integers(0, len(request) - 1))  # flip: one byte of the request replaced
    return request[:at] + bytes([draw(st.integers(0, 255))]) + request[at + 1:]


def keep_alive(target: Target) -> st.SearchStrategy[Request]:
    return requests(target).filter(lambda r: not r.closes)


@FUZZ
@given(data=st.data(), cuts=splits, pause=pauses)
def test_malformed_streams_get_json_errors_or_a_close(target, data, cuts, pause):
    COUNTS[f"{target.kind}:malformed"] += 1
    before = data.draw(st.lists(keep_alive(target), max_size=2))
    broken = data.draw(malformed(target))
    after = data.draw(st.lists(requests(target), max_size=2))
    stream = b"".join(r.data for r in before) + broken + b"".join(r.data for r in after)
    with connect(target.port) as sock:
        send(sock, pieces(stream, cuts), pause)
        target.still_serving()  # everyone else is served while this connection waits (for more of a body...)
        try:
            sock.shutdown(socket.SHUT_WR)  # so a server waiting for more of a body sees its end
        except OSError:
            pass  # (already closed by the server)
        reader = Reader(sock)
        for i, request in enumerate(before):
            answer = reader.answer()
            assert answer is not None, f"valid request {i} before the broken one not answered"
            assert (answer.status, check(answer)) == target.reference(request.body), request.data[:300]
        rest = []
        while (answer := reader.answer()) is not None:
            check(answer)
            rest.append(answer)
        # The broken request (or what the parser made of it: a body longer than its Content-Length is a
        # second request), then at most the valid ones after it.
        assert len(rest) <= 2 + len(after), (rest, broken[:300])
    target.still_serving()


# -- what the fuzzing found (regressions) -------------------------------------------------------


@pytest.mark.parametrize("data", [b"NOT HTTP\r\n\r\n", b"POST / HTTP/1.1\r\nX-Foo\r\n\r\n",
                                  b"POST / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                                  b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"])
def test_what_the_parser_refuses_is_answered_as_json(target, data):
    """(gunicorn answered these with its HTML error page.)"""
    with connect(target.port) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        answer = reader.answer()
        assert answer is not None and answer.status in (400, 501) and check(answer)["success"] is False
        assert reader.closed()


def test_a_body_cut_short_by_a_half_close_is_refused_not_run(target):
    """A body that ends (the client half-closes) before its Content-Length is a 400, never run as a
    command: cut there, it may still be JSON. (The service ran it; the gateway closed without a word.)"""
    body = b'{"cmd": "add", "args": {"a": 1}}'
    with connect(target.port) as sock:
        sock.sendall(plain(target.path, target.port, body).replace(b"Length: %d" % len(body),
                                                                   b"Length: %d" % (len(body) + 9)))
        sock.shutdown(socket.SHUT_WR)
        answer = Reader(sock).answer()
    assert answer is not None and answer.status == 400, answer
    assert re.search(r"body ended after \d+ of its \d+ bytes", check(answer)["error"]), answer
    target.still_serving()


def test_a_client_keeping_its_end_open_after_close_stalls_no_one(target):
    """After ``Connection: close`` gunicorn lingers up to 2 s for the client to close (RFC 9112 9.6);
    on gthread's loop thread that stalled every connection of the service for those 2 s."""
    held = []
    try:
        started = time.monotonic()
        for _ in range(3):
            sock = connect(target.port)
            held.append(sock)
            sock.sendall(plain(target.path, target.port, b'{"cmd": "echo"}', close=True))
            assert Reader(sock).answer() is not None  # (and the socket is left open)
            target.still_serving()
        assert time.monotonic() - started < 3, "another client waited for a lingering close"
    finally:
        for sock in held:
            sock.close()


def test_no_process_logged_a_traceback(stack):
    """Runs last (the module's order): every process still runs and logged no traceback."""
    for kind in sorted(TARGETS):
        Target(stack, kind).still_serving()
    for name, proc in stack.procs.items():
        assert proc.popen.poll() is None, f"{name} exited"
        log = proc.log()
        assert "Traceback" not in log and "Error handling request" not in log, f"{name}:\n{log[-5000:]}"
