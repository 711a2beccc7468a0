"""The HTTP floor: a bare WSGI app that reads the body and answers a fixed JSON document."""

from __future__ import annotations

from typing import Any, Callable, Iterable

ANSWER = b'{"success":true,"result":{"level":50,"muted":false}}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER))),
           ("Cache-Control", "no-store")]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the request body (as a real service must), answer the fixed document."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", HEADERS)
    return [ANSWER]
