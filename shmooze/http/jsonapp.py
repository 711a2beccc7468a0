"""HTTP side of the command protocol: a Werkzeug WSGI app around a handler.

Transport errors are JSON too (``{"success": false, "error": ...}``) with the
fitting status: 400 for a body that is not JSON, 405 for a method other than
POST, 413 for a body over the limit, 415 for another content type, 408 for a body
that does not arrive in time. After a 408, a 413 or a malformed body the connection
is closed, so nothing more of that body is ever read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterable

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from shmooze import caller, protocol
from shmooze.http.heads import json_answer, reason
from shmooze.http.slowbodies import READERS, Shed
from shmooze.servicekey import PROOF_HEADER
from shmooze.system.cooperative import gevent_sockets, green_library

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json", "text/json"})
#: A body is read in pieces of this size, each under its own deadline.
BODY_PIECE = 64 << 10


class JSONHTTPError(HTTPException):
    """An HTTP error that renders itself as a JSON command answer."""

    code: int  # always given here (Werkzeug's base class allows None)

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra_headers = headers or {}
        #: Close the connection after answering (what is left of the request is never read).
        self.close = close

    def body(self) -> bytes:
        """The answer's body, as :meth:`get_response` sends it."""
        return protocol.dumps(protocol.error(self.message))

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        return json_response(self.body(), self.code, self.extra_headers)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = obj if isinstance(obj, bytes) else protocol.dumps(obj)
    resp = Response(body, status=status, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def close_connection(start_response: Callable[..., Any]) -> None:
    """Make gunicorn close this connection after the answer instead of reading (draining) the
    rest of the request's body, or reading a next request; other servers do as they do."""
    response = getattr(start_response, "__self__", None)
    force_close = getattr(response, "force_close", None)
    if callable(force_close):
        force_close()
    request = getattr(response, "req", None)
    if request is not None and hasattr(request, "must_close"):
        request.must_close = True  # what gevent's keep-alive loop looks at before parsing again


def finish_request(environ: dict[str, Any]) -> Iterable[bytes]:
    """Hand the connection back to the server after a WebSocket; return its result.

    gunicorn's gevent (and eventlet) workers: returns ``ALREADY_HANDLED``, the
    sentinel with which their ``handle_request`` returns without writing a
    response. The WebSocket already shut the socket down, so the keep-alive
    loop reads end-of-stream at once and gunicorn closes the connection.

    Other gunicorn workers (sync, gthread): raises ``StopIteration``, which each
    of them takes as "close this connection, write nothing". The Werkzeug dev
    server: raises ``ConnectionError``, which it treats as a dropped client.
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        if green_library(sock) is not None:
            from gunicorn.workers.base_async import ALREADY_HANDLED

            return ALREADY_HANDLED
        raise StopIteration("websocket finished")
    if environ.get("werkzeug.socket") is not None:
        raise ConnectionError("websocket finished")
    return []


def serve_json_errors(run: Callable[[], Any], environ: dict[str, Any], start_response: Callable[..., Any],
                      failure: str) -> Iterable[bytes]:
    """Serve ``run()``, a WSGI body or a Werkzeug response, with every error answered as JSON.

    An HTTP error is answered with its status (closing the connection when it says so); any other
    exception is logged and answered 500 with the message ``failure``."""
    try:
        response = run()
        if not isinstance(response, Response):
            return response
    except HTTPException as exc:
        if getattr(exc, "close", False):
            close_connection(start_response)
        response = exc.get_response(environ)
    except Exception:
        log.exception("%s on %s %s", failure, environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", ""))
        response = json_response(protocol.error(failure), 500)
    return response(environ, start_response)


class _BodyTimeout(Exception):
    """A piece of a request body did not arrive in time."""


def _deadline(seconds: float) -> Any:
    """A deadline on what the block reads (gevent's timeout when gevent runs the sockets; else none,
    and the socket's own timeout bounds each read)."""
    if gevent_sockets():
        from gevent import Timeout

        return Timeout(seconds, _BodyTimeout)
    return contextlib.nullcontext()


def read_body(environ: dict[str, Any], stream: Any, size: int | None, max_bytes: int,
               timeout: float, min_rate: float) -> bytes:
    """Read ``size`` bytes (``None``: to the end of a chunked body, or past ``max_bytes``).

    Each piece of up to 64 KiB must arrive within ``timeout`` plus its size at ``min_rate``
    bytes a second: a client that trickles gets 408 and its connection closed.
    """
    sock = environ.get("gunicorn.socket")
    prior = sock.gettimeout() if sock is not None else None
    pieces: list[bytes] = []
    got = 0
    want = size if size is not None else max_bytes + 1
    # A gateway worker may cut it while slow bodies crowd its connections (shmooze.http.slowbodies).
    reader = READERS.enter((size or 0) / min_rate) if gevent_sockets() else None
    started = time.monotonic()
    try:
        while got < want:
            ask = min(BODY_PIECE, want - got)
            budget = timeout + ask / min_rate
            if sock is not None:
                sock.settimeout(budget)
            with _deadline(budget):
                piece = stream.read(ask)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except Shed:
        log.debug("cut a slow request body from %s (%d bytes after %.1f s)", environ.get("REMOTE_ADDR", "?"), got,
                  time.monotonic() - started)
        raise JSONHTTPError(408, "the request body did not arrive in time: slow bodies are cut while they "
                                 "crowd the gateway", close=True) from None
    except (_BodyTimeout, socket.timeout, TimeoutError):
        log.warning("closed a connection from %s: its body did not arrive in time (%d bytes after %.0f s; "
                    "body_timeout %g s, body_min_rate %g bytes/s)", environ.get("REMOTE_ADDR", "?"), got,
                    budget, timeout, min_rate)
        raise JSONHTTPError(408, f"the request body did not arrive in time (at least {min_rate:g} bytes a "
                                 f"second after {timeout:g} s)", close=True) from None
    except (OSError, ValueError) as exc:  # gunicorn's parse errors of a chunked body are among these
        raise JSONHTTPError(400, f"malformed request body: {protocol.short(str(exc) or type(exc).__name__, 80)}",
                            close=True) from None
    except Exception as exc:
        if type(exc).__module__.startswith("gunicorn."):  # InvalidChunkSize and the like
            raise JSONHTTPError(400, f"malformed request body: {type(exc).__name__}", close=True) from None
        raise
    finally:
        if reader is not None:
            READERS.leave(reader)
        if sock is not None:
            try:
                sock.settimeout(prior)
            except OSError:
                pass
    if size is not None and got < size:  # the client closed (or half-closed) in the middle of its body
        raise JSONHTTPError(400, f"the request body ended after {got} of its {size} bytes (Content-Length)",
                            close=True)
    return b"".join(pieces)


def read_command_body(environ: dict[str, Any], max_bytes: int, timeout: float = 10.0,
                      min_rate: float = 8192) -> tuple[bytes, str]:
    """Check method, content type and size of a command request; return its body and media type.

    It reads the WSGI environ directly: this runs for every command, at the gateway and at
    the service, so it stays lean. See :func:`read_body` for ``timeout`` and ``min_rate``.
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
            raise JSONHTTPError(413, f"body of {length} bytes is over the limit of {max_bytes} bytes", close=True)
        body = read_body(environ, stream, length, max_bytes, timeout, min_rate) if length > 0 else b""
    elif environ.get("wsgi.input_terminated"):  # chunked: read no more than the limit allows
        body = read_body(environ, stream, None, max_bytes, timeout, min_rate)
    else:
        body = b""
    if len(body) > max_bytes:
        raise JSONHTTPError(413, f"body is over the limit of {max_bytes} bytes", close=True)
    return body, mimetype


def raw_json_response(start_response: Callable[..., Any], body: bytes, status: int = 200,
                      extra: tuple[str, str] | None = None) -> list[bytes]:
    """Answer JSON bytes straight to the WSGI server (the hot path), with at most one ``extra`` header."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    if extra is not None:
        headers.append(extra)
    start_response(f"{status} {reason(status)}", headers)
    return [body]


class _ErrorPage:
    """A client's socket as gunicorn's ``handle_error`` writes its error page to it: the page is kept
    here (for its status), nothing is sent."""

    def __init__(self, sock: Any):
        self.sock = sock
        self.page = b""

    def sendall(self, data: bytes) -> None:
        self.page += data

    def gettimeout(self) -> float:
        return 0.0  # (so gunicorn's write_nonblock leaves the real socket's blocking mode alone)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def answer_worker_error(handle_error: Callable[..., Any], req: Any, client: Any, addr: Any, exc: BaseException) -> None:
    """gunicorn's ``Worker.handle_error`` (its status, its log lines and access log) answered as JSON,
    not as gunicorn's HTML page: a request its parser refuses (400, 414, 431, 501...) or an error
    outside the app (500). The connection is closed after it, as gunicorn does."""
    from gunicorn import util

    page = _ErrorPage(client)
    handle_error(req, page, addr, exc)
    try:
        status = int(page.page.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 500
    text = str(exc) if status != 500 else ""  # (a 500 is a fault of ours: its text stays in the log)
    message = f"{reason(status).lower()}: {text[:100]}" if text else reason(status).lower()
    body = protocol.dumps(protocol.error(message))
    try:
        util.write_nonblock(client, json_answer(status, body, close=True))
    except OSError:  # the client may be gone
        log.debug("could not send an error answer", exc_info=True)


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


#: What :meth:`CommandApp.answer` returns for a request it answered with a kept stream.
STREAMED: Any = object()


class CommandApp:
    """WSGI app that answers command requests with ``handler(parsed_request) -> answers``.

    ``guard`` (a :class:`shmooze.access.ServiceGuard`, on a service's own port) checks the Host and
    Origin, the service key's signature and who may change state, names the caller the handler runs
    the commands for (:func:`shmooze.caller.current`), and proves signed answers."""

    def __init__(self, handler: Callable[[protocol.Request], list[dict[str, Any]]], max_body_bytes: int = 1 << 20,
                 max_answer_bytes: int = 16 << 20, guard: Any = None,
                 quick: Callable[[protocol.Request], bool] | None = None, events: Any = None):
        self.handler = handler
        #: The service's :class:`~shmooze.events.ChangeLog`: ``changes`` with ``stream`` is then a kept
        #: stream (:mod:`shmooze.http.changestream`) on a server that lends its socket (gunicorn).
        self.events = events
        self.max_body_bytes = max_body_bytes
        self.max_answer_bytes = max_answer_bytes
        self.guard = guard
        #: Whether a request answers at once (see :meth:`quick_request`); None: none does.
        self.quick = quick
        self._parsed = threading.local()

    def quick_request(self, body: bytes) -> bool:
        """Whether the request with this body answers at once, without waiting for anything, so that
        the worker may run it on its connection loop (:mod:`shmooze.http.loopworker`). A body that is not
        a command request is answered at once too (with an error)."""
        if self.quick is None:
            return False
        try:
            parsed = protocol.parse_request(body)
        except protocol.BodyError:
            return True
        self._parsed.last = (body, parsed)  # parsed once: answer() takes it (same thread, same body)
        return self.quick(parsed)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = serve_json_errors(lambda: self.answer(environ, start_response), environ, start_response,
                                   "internal error")
        if answer is STREAMED:  # the connection was a kept stream: the server closes it, writing nothing
            return finish_request(environ)
        return answer

    def answer(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """Read, run and answer one command request (errors are raised, see :func:`serve_json_errors`)."""
        guard = self.guard
        if guard is not None:
            guard.check_headers(environ)
        body, _ = read_command_body(environ, self.max_body_bytes)
        nonce = guard.signed(environ, body) if guard is not None else None
        try:
            parsed = self._parse(body)
            who = guard.admit(parsed, environ, nonce is not None) if guard is not None else None
            # A kept stream holds one of the service's threads for as long as its reader stays: only a signed
            # request (a gateway following the service) gets one; any other reader (reads are open to other
            # local users) is answered as a long poll.
            since = self._stream_from(parsed, environ) if nonce is not None or guard is None else None
            if since is not None:
                return self._stream(environ, since, nonce)
            if who is None:
                answers = self.handler(parsed)
            else:
                with caller.running_as(who):  # whom its commands run for: the command log and change events say
                    answers = self.handler(parsed)
            answer = encode_or_fail(parsed, answers)
        except Exception as exc:
            if nonce is None:
                raise
            error = exc if isinstance(exc, JSONHTTPError) else JSONHTTPError(500, "internal error")
            if error is not exc:
                log.exception("internal error on %s", environ.get("PATH_INFO", ""))
            # An error is proven too: the client knows it is the service's.
            error.extra_headers[PROOF_HEADER] = guard.proof(nonce, error.code, error.body())
            raise error from None
        if len(answer) > self.max_answer_bytes:
            answer = too_big_answer(parsed, len(answer), self.max_answer_bytes)
        proof = (PROOF_HEADER, guard.proof(nonce, 200, answer)) if nonce is not None else None
        return raw_json_response(start_response, answer, 200, proof)

    def _stream_from(self, parsed: protocol.Request, environ: dict[str, Any]) -> int | None:
        """The version a ``changes`` request with ``"stream": true`` asks from, when it can be a kept stream
        here (else None: answered as a long poll)."""
        if self.events is None or parsed.batch or environ.get("gunicorn.socket") is None:
            return None
        item = parsed.items[0]
        if not isinstance(item, protocol.Command) or item.cmd != "changes" or item.args.get("stream") is not True:
            return None
        since = item.args.get("since", 0)
        return since if isinstance(since, int) and not isinstance(since, bool) and since >= 0 else None

    def _stream(self, environ: dict[str, Any], since: int, nonce: bytes | None) -> Any:
        from shmooze.http import changestream

        guard = self.guard

        def proof() -> tuple[str, str] | None:
            return (PROOF_HEADER, guard.proof(nonce, 200, b"")) if nonce is not None else None

        changestream.serve_stream(environ["gunicorn.socket"], self.events, since, proof)
        return STREAMED

    def _parse(self, body: bytes) -> protocol.Request:
        last = getattr(self._parsed, "last", None)
        if last is not None:
            self._parsed.last = None
            if last[0] == body:
                return last[1]
        try:
            return protocol.parse_request(body)
        except protocol.BodyError as exc:
            raise JSONHTTPError(400, str(exc)) from None


def too_big_answer(request: protocol.Request, size: int, limit: int) -> bytes:
    """What replaces an answer over ``max_answer_bytes``: an error for every command of the request."""
    log.warning("refused to send an answer of %d bytes (max_answer_bytes %d)", size, limit)
    what = "the batch's answers" if request.batch else "the answer"
    error = protocol.error(f"{what} would be {size} bytes, over the limit of {limit} bytes: ask for less at once")
    return encode_or_fail(request, [error for _ in request.items])


def service_app(service: Any, max_body_bytes: int = 1 << 20, max_answer_bytes: int = 16 << 20,
                guard: Any = None) -> CommandApp:
    """The WSGI app of a :class:`shmooze.service.Service` (``guard``: see :class:`CommandApp`)."""
    return CommandApp(service.handle, max_body_bytes, max_answer_bytes, guard, service.is_quick, service.events)
