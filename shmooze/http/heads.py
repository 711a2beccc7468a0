"""HTTP/1.1 heads parsed from bytes: a request's (the gateway's fast lane, a service's loop worker)
and a response's (the gateway's forward); and the JSON answer written where no WSGI server writes it
(:func:`json_answer`: the lane's answers, a worker's error page).

No I/O, in the manner of websockets' sans-I/O core: the caller reads, finds the head's end with
:func:`head_end`, and gets a parsed head or a :class:`HeadError` saying what is wrong. Strict, as
RFC 9112 lets a recipient be: a line that is not ``NAME: value``, whitespace before the colon, an
obsolete line folding, a bare LF or a control character, a repeated ``Content-Length`` (or another
field that may appear once), both ``Content-Length`` and ``Transfer-Encoding`` (the way requests are
smuggled past a proxy): each is an error. The callers decide what an error means: the lane and the
loop worker leave such a request to gunicorn's parser (which answers it), the forward refuses the
answer (502).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

#: The longest head parsed unless the caller says otherwise.
MAX_HEAD = 64 << 10

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([!-~]+) HTTP/(1\.[01])\r\n")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: (" + _VALUE + rb"))?\r\n")
#: A field line as RFC 9110 writes it, from the start of a line (see _fields).
_FIELD = re.compile(rb"(?<=\n)(" + _TOKEN + rb"):[\t ]*(" + _VALUE + rb")\r\n")
_NO_OPTIONS: frozenset[bytes] = frozenset()
#: Fields that may appear once (others repeated are joined with ", ", RFC 9110 5.3).
SINGLE = frozenset({b"content-length", b"host", b"content-type", b"authorization", b"origin"})


class HeadError(ValueError):
    """A head that breaks HTTP/1.1's syntax or a limit; the message says what and where."""


class RequestHead(NamedTuple):
    """A request's head. ``fields``: lower-case name -> value (surrounding whitespace removed)."""

    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    fields: dict[bytes, bytes]
    content_length: int | None  # None: no Content-Length
    chunked: bool  # the body is framed by Transfer-Encoding
    connection: frozenset[bytes]  # the Connection header's options, lower case
    keep_alive: bool

    @property
    def body_length(self) -> int | None:
        """The body's length in bytes (0 without one); None when chunked."""
        return None if self.chunked else (self.content_length or 0)


class ResponseHead(NamedTuple):
    """A response's head; ``content_length`` None and not ``chunked``: the body runs to the end of the
    connection."""

    version: bytes
    status: int
    reason: bytes
    fields: dict[bytes, bytes]
    content_length: int | None
    chunked: bool
    connection: frozenset[bytes]
    keep_alive: bool


def head_end(data: bytes, limit: int = MAX_HEAD) -> int:
    """Where the head in ``data`` ends (the index of its blank line's ``\\r\\n\\r\\n``), -1 while it is
    not all there; :class:`HeadError` when it is not within ``limit`` bytes."""
    end = data.find(b"\r\n\r\n", 0, limit + 4)
    if end < 0 and len(data) >= limit + 4:
        raise HeadError(f"a head over {limit} bytes")
    return end


def parse_request(data: bytes, end: int, limit: int = MAX_HEAD) -> RequestHead:
    """The request head ``data[:end]`` (``end``: from :func:`head_end`)."""
    (method, target, version), fields = _start(data, end, limit, _REQUEST_LINE, "a request line (METHOD TARGET HTTP/1.x)")
    length, coding = _framing(fields)
    if coding is not None and coding != b"chunked":
        raise HeadError("a request's Transfer-Encoding must end with chunked")  # RFC 9112 6.3
    connection = _options(fields.get(b"connection"))
    return RequestHead(method, target, version, fields, length, coding is not None, connection,
                       _keep_alive(version, connection))


def parse_response(data: bytes, end: int, limit: int = MAX_HEAD) -> ResponseHead:
    """The response head ``data[:end]`` (``end``: from :func:`head_end`). A Transfer-Encoding that does
    not end with chunked: the body runs to the end of the connection (RFC 9112 6.3)."""
    (version, status, reason), fields = _start(data, end, limit, _STATUS_LINE, "a status line (HTTP/1.x CODE REASON)")
    length, coding = _framing(fields)
    connection = _options(fields.get(b"connection"))
    return ResponseHead(version, int(status), reason or b"", fields, length, coding == b"chunked", connection,
                        _keep_alive(version, connection))


def _start(data: bytes, end: int, limit: int, line: re.Pattern[bytes], what: str) -> tuple[Any, dict[bytes, bytes]]:
    """The first line's parts and the fields of the head ``data[:end]``."""
    if end > limit:
        raise HeadError(f"a head over {limit} bytes")
    found = line.match(data, 0, end + 2)
    if found is None:
        stop = data.find(b"\r\n", 0, end)
        raise HeadError(f"not {what}: {data[:min(stop if stop >= 0 else end, 80)]!r}")
    return found.groups(), _fields(data, found.end(), end)


def _fields(data: bytes, start: int, end: int) -> dict[bytes, bytes]:
    """The field lines from ``start`` (just after a line's LF) up to the blank line at ``end``.

    One pass finds every line that is a field; the head is well formed when each LF in it ends
    one of them: a match starts right after an LF and holds no other CR or LF, so the lines
    between the LFs are all matched whole (cheaper than checking the lines in a pass of their own).
    """
    found = _FIELD.findall(data, start, end + 2)
    if data.count(b"\n", start, end + 2) != len(found):
        raise HeadError(_field_problem(data, start, end))
    if data.find(b" \r\n", start, end + 2) < 0 and data.find(b"\t\r\n", start, end + 2) < 0:
        fields = {name.lower(): value for name, value in found}  # (no value to strip: the usual head)
    else:
        fields = {name.lower(): value.rstrip(b" \t") for name, value in found}
    if len(fields) == len(found):
        return fields
    fields = {}  # a field repeated: join a list's values (RFC 9110 5.3), refuse any other
    for name, value in found:
        name = name.lower()
        before = fields.get(name)
        if before is None:
            fields[name] = value.rstrip(b" \t")
        elif name in SINGLE:
            raise HeadError(f"{name.decode()} given twice")
        else:
            fields[name] = before + b", " + value.rstrip(b" \t")
    return fields


def _field_problem(data: bytes, start: int, end: int) -> str:
    """Which field line is wrong, and how (only on the error path)."""
    for number, line in enumerate(data[start:end].split(b"\r\n"), 2):
        if line[:1] in (b" ", b"\t"):
            return f"line {number} is an obsolete line folding (continues the line before): {line[:60]!r}"
        if _FIELD.fullmatch(b"\n" + line + b"\r\n", 1) is None:
            name = line.split(b":", 1)[0]
            if b":" in line and name.rstrip(b" \t") != name:
                return f"line {number} has whitespace before its colon: {line[:60]!r}"
            if b"\n" in line or b"\r" in line:
                return f"line {number} ends with a bare CR or LF: {line[:60]!r}"
            return f"line {number} is not a field (NAME: value, visible characters): {line[:60]!r}"
    return "a malformed field line"


def _framing(fields: dict[bytes, bytes]) -> tuple[int | None, bytes | None]:
    """(Content-Length or None, the last transfer coding, lower case, or None without Transfer-Encoding)."""
    raw = fields.get(b"content-length")
    coding = fields.get(b"transfer-encoding")
    if coding is not None:
        if raw is not None:
            raise HeadError("both Content-Length and Transfer-Encoding")
        return None, coding.rsplit(b",", 1)[-1].strip().lower()
    if raw is None:
        return None, None
    if raw.isdigit() and len(raw) <= 15:
        return int(raw), None
    raise HeadError(f"Content-Length {raw[:20]!r} is not a number of bytes")


_OPTIONS: dict[bytes, frozenset[bytes]] = {}  # a Connection value -> its options (a few values in practice)


def _options(value: bytes | None) -> frozenset[bytes]:
    if value is None:
        return _NO_OPTIONS
    options = _OPTIONS.get(value)
    if options is None:
        if len(_OPTIONS) >= 64:
            _OPTIONS.clear()  # many different values: a scan, not clients; start again
        options = _OPTIONS[value] = frozenset(option.strip() for option in value.lower().split(b","))
    return options


def _keep_alive(version: bytes, connection: frozenset[bytes]) -> bool:
    """HTTP/1.1 keeps the connection unless told ``close``; HTTP/1.0 only when told ``keep-alive``."""
    if version == b"1.1":
        return b"close" not in connection
    return b"keep-alive" in connection


_REASONS: dict[int, str] = {}


def reason(status: int) -> str:
    """The reason phrase of ``status`` ("Unknown" for a code HTTP does not name)."""
    phrase = _REASONS.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        _REASONS[status] = phrase
    return phrase


_date = (0, "")  # (second, its Date header): one formatting a second


def json_answer(status: int, body: bytes, close: bool, extra: str = "") -> bytes:
    """A whole answer with a JSON ``body`` (never cached); ``extra``: more header lines, each ending CRLF."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return (f"HTTP/1.1 {status} {reason(status)}\r\nDate: {_date[1]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n").encode("latin-1") + body
