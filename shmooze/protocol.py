"""The shmooze wire codec, free of I/O.

Two framings share one message shape:

* HTTP bodies (and WebSocket messages): one command ``{"cmd": NAME, "args": {...}}``
  or a JSON list of them (a batch);
* module streams: the same objects, one per line (newline-delimited JSON).

Answers are ``{"success": true, "result": R}`` (``result`` left out when there is
none) or ``{"success": false, "error": MESSAGE}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


class BodyError(ValueError):
    """The body is not a JSON document at all: a transport error (HTTP 400)."""


@dataclass(frozen=True)
class Command:
    """One well-formed command."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The command as sent on a module's command stream: ``args`` always there, ``{}`` when empty
        (as the original framework sent it; modules in other languages read ``msg["args"]``)."""
        return {"cmd": self.cmd, "args": self.args}


@dataclass(frozen=True)
class Invalid:
    """A JSON value in command position that is not a command; answered with ``error``."""

    error: str


Item = Command | Invalid


@dataclass(frozen=True)
class Request:
    """A parsed body: its items, and whether they came as a batch (a list)."""

    items: list[Item]
    batch: bool


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON text, but no answer holding it could be encoded again
        raise ValueError(f"number {short(text, 40)} is out of range")
    return value


def loads(data: bytes | str) -> Any:
    """Strict JSON decoding: UTF-8 only, no NaN or Infinity (nor numbers that overflow to it);
    every failure is a :class:`BodyError`."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BodyError("body is not accepted: JSON nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, integers too long to convert
        raise BodyError(f"body is not accepted: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def to_item(value: Any) -> Item:
    """Check one decoded JSON value in command position."""
    if not isinstance(value, dict):
        return Invalid(f"a command must be an object with 'cmd', not {type_name(value)}")
    cmd = value.get("cmd", _MISSING)
    if cmd is _MISSING:
        return Invalid("command has no 'cmd'")
    if not isinstance(cmd, str) or not cmd:
        return Invalid(f"'cmd' must be a non-empty string, not {type_name(cmd)}")
    args = value.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return Invalid(f"'args' of {cmd!r} must be an object, not {type_name(args)}")
    # Other top-level keys (a client's tag, an id) are ignored, as the original framework did;
    # the arguments themselves are checked strictly by the service.
    return Command(cmd, args)


def parse_request(body: bytes | str) -> Request:
    """Parse an HTTP body into a :class:`Request`; raise :class:`BodyError` if it is not JSON."""
    value = loads(body)
    if isinstance(value, list):
        return Request([to_item(v) for v in value], batch=True)
    return Request([to_item(value)], batch=False)


def ok(result: Any = _MISSING) -> dict[str, Any]:
    """A success answer; ``result`` is left out when not given (or ``None``)."""
    if result is _MISSING or result is None:
        return {"success": True}
    return {"success": True, "result": result}


def error(message: str) -> dict[str, Any]:
    return {"success": False, "error": str(message)}


def encode_answers(request: Request, answers: list[dict[str, Any]]) -> bytes:
    """Encode the answers of a request: a list for a batch, the one answer otherwise."""
    return dumps(answers if request.batch else answers[0])


def encode_line(obj: Any) -> bytes:
    """One stream line: compact JSON and a newline."""
    return dumps(obj) + b"\n"


class NotAnAnswer(ValueError):
    """A reply that is not a command answer (no boolean ``success``)."""


class AnswerFailed(Exception):
    """A well-formed answer that says ``success: false``; the message is its ``error``."""


def answer_result(value: Any) -> Any:
    """The result of an answer object (None when it has none).

    Raises :class:`AnswerFailed` with its error when it failed, :class:`NotAnAnswer` when it is
    not an answer at all: every reader of answers checks them here."""
    if not isinstance(value, dict) or not isinstance(value.get("success"), bool):
        raise NotAnAnswer(f"malformed answer: {short(value)}")
    if value["success"]:
        return value.get("result")
    err = value.get("error")
    raise AnswerFailed(err if isinstance(err, str) else f"failed without a message: {short(value)}")


def parse_answer(value: Any) -> tuple[bool, Any]:
    """Check an answer object; return ``(True, result)`` or ``(False, error message)``."""
    try:
        return True, answer_result(value)
    except (NotAnAnswer, AnswerFailed) as exc:
        return False, str(exc)


@dataclass(frozen=True)
class Line:
    """A complete line of a stream, without its newline."""

    data: bytes


@dataclass(frozen=True)
class LineTooLong:
    """A line went past the limit: its bytes are dropped up to and including its newline."""

    limit: int

    def __str__(self) -> str:
        return f"line longer than {self.limit} bytes"


class LineBuffer:
    """Splits a byte stream into lines, with no I/O: :meth:`feed` bytes, then take events with
    :meth:`next_event` (or all of them with :meth:`events`).

    A line longer than ``max_line`` bytes is one :class:`LineTooLong` event, reported as soon as the
    limit is passed (so an endless line never fills memory); the rest of it, up to and including its
    newline, is dropped however it arrives, and the next line is read as usual.
    """

    __slots__ = ("max_line", "_buf", "_skipping")  # four per module

    def __init__(self, max_line: int = 1 << 20):
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line already reported

    def feed(self, data: bytes | memoryview) -> None:
        """Add bytes read from the stream."""
        self._buf += data

    def next_event(self) -> Line | LineTooLong | None:
        """The next complete line, or an over-long line; None when more bytes are needed."""
        nl = self._buf.find(b"\n")
        if self._skipping:
            if nl < 0:
                self._buf.clear()
                return None
            del self._buf[: nl + 1]
            self._skipping = False
            nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > self.max_line:
                self._buf.clear()
                self._skipping = True
                return LineTooLong(self.max_line)
            return None
        if nl > self.max_line:
            del self._buf[: nl + 1]
            return LineTooLong(self.max_line)
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        return Line(line)

    def events(self, data: bytes | memoryview = b"") -> list[Line | LineTooLong]:
        """Add bytes and take every event they complete."""
        self.feed(data)
        out: list[Line | LineTooLong] = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line (not counting the dropped rest of an over-long one)."""
        return 0 if self._skipping else len(self._buf)


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
