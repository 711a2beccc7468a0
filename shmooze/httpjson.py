"""HTTP side of the command protocol: a Werkzeug WSGI app around a handler.

Transport errors are JSON too (``{"success": false, "error": ...}``) with the
fitting status: 400 for a body that is not JSON, 405 for a method other than
POST, 413 for a body over the limit, 415 for another content type.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Callable, Iterable

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from shmooze import protocol

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json", "text/json"})


class JSONHTTPError(HTTPException):
    """An HTTP error that renders itself as a JSON command answer."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra_headers = headers or {}

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:  # type: ignore[override]
        return json_response(protocol.error(self.message), self.code, self.extra_headers)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = obj if isinstance(obj, bytes) else protocol.dumps(obj)
    resp = Response(body, status=status, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def read_command_body(environ: dict[str, Any], max_bytes: int) -> tuple[bytes, str]:
    """Check method, content type and size of a command request; return its body and media type.

    It reads the WSGI environ directly: this runs for every command, at the gateway and at
    the service, so it stays lean.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    if method != "POST":
        raise JSONHTTPError(405, f"use POST to send commands, not {method}", {"Allow": "POST"})
    mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if mimetype not in JSON_TYPES:
        raise JSONHTTPError(415, f"send commands as application/json (or text/json), not {mimetype or 'none'}")
    stream = environ["wsgi.input"]
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if raw_length:
        try:
            length = int(raw_length)
        except ValueError:
            raise JSONHTTPError(400, f"bad Content-Length {raw_length[:20]!r}") from None
        if length > max_bytes:
            raise JSONHTTPError(413, f"body of {length} bytes is over the limit of {max_bytes} bytes")
        body = stream.read(length) if length > 0 else b""
    elif environ.get("wsgi.input_terminated"):  # chunked: read no more than the limit allows
        body = stream.read(max_bytes + 1)
    else:
        body = b""
    if len(body) > max_bytes:
        raise JSONHTTPError(413, f"body is over the limit of {max_bytes} bytes")
    return body, mimetype


def raw_json_response(start_response: Callable[..., Any], body: bytes, status: int = 200) -> list[bytes]:
    """Answer JSON bytes straight to the WSGI server (the hot path)."""
    start_response(f"{status} {_reason(status)}", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))),
                                                   ("Cache-Control", "no-store")])
    return [body]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_or_fail(request: protocol.Request, answers: list[dict[str, Any]]) -> bytes:
    """Encode answers; an answer whose result is not JSON (or nested too deeply) becomes an error answer."""
    try:
        return protocol.encode_answers(request, answers)
    except (TypeError, ValueError, RecursionError):
        parts = []
        for answer in answers:  # each on its own, so a batch's list adds no level of nesting
            try:
                parts.append(protocol.dumps(answer))
            except (TypeError, ValueError, RecursionError) as exc:
                log.error("answer is not JSON: %s", exc)
                parts.append(protocol.dumps(protocol.error(f"the command's result is not JSON: {exc}")))
        return b"[" + b",".join(parts) + b"]" if request.batch else parts[0]


class CommandApp:
    """WSGI app that answers command requests with ``handler(parsed_request) -> answers``."""

    def __init__(self, handler: Callable[[protocol.Request], list[dict[str, Any]]], max_body_bytes: int = 1 << 20):
        self.handler = handler
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            body, _ = read_command_body(environ, self.max_body_bytes)
            try:
                parsed = protocol.parse_request(body)
            except protocol.BodyError as exc:
                raise JSONHTTPError(400, str(exc)) from None
            return raw_json_response(start_response, encode_or_fail(parsed, self.handler(parsed)))
        except HTTPException as exc:
            response = exc.get_response(environ)
        except Exception:
            log.exception("unhandled error in command request")
            response = json_response(protocol.error("internal error"), 500)
        return response(environ, start_response)


def service_app(service: Any, max_body_bytes: int = 1 << 20) -> CommandApp:
    """The WSGI app of a :class:`shmooze.service.Service`."""
    return CommandApp(service.handle, max_body_bytes)
