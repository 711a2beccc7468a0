"""WSGI apps for the WebSocket transport tests (served by gunicorn ``-k gevent``).

``/ws`` echoes text messages, ``/bye`` greets and closes (4000), ``/boom`` raises, ``/broadcast`` (POST
body) sends its body to every open WebSocket, ``/count`` tells how many are open, anything else answers 200.
``$WSAPPS_PAD_FDS`` descriptors are held open in the worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from shmooze.http.websocket import WebSocket, WebSocketClosed, websocket_response

ALLOWED_ORIGINS = ["http://allowed.example"]

clients: set[WebSocket] = set()

# Descriptors held open so that connections get numbers above FD_SETSIZE (1024).
_padding = [open(os.devnull, "rb") for _ in range(int(os.environ.get("WSAPPS_PAD_FDS", "0")))]


def echo(ws: WebSocket) -> None:
    """Send every message back until the peer closes."""
    clients.add(ws)
    try:
        while (text := ws.receive()) is not None:
            ws.send(text)
    finally:
        clients.discard(ws)


def bye(ws: WebSocket) -> None:
    """Greet, then close from the server side with 4000."""
    ws.send("bye")
    ws.close(4000, "done")


def boom(ws: WebSocket) -> None:
    """Fail after the first message (the client should see 1011)."""
    ws.receive()
    raise RuntimeError("boom (expected by the tests)")


def _json(start_response: Callable[..., Any], data: dict[str, Any]) -> list[bytes]:
    body = json.dumps(data).encode("utf-8")
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The test app."""
    path = environ.get("PATH_INFO", "/")
    if path == "/ws":
        return websocket_response(environ, start_response, echo, ALLOWED_ORIGINS)
    if path in ("/bye", "/boom"):
        return websocket_response(environ, start_response, bye if path == "/bye" else boom)
    if path == "/broadcast":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        text = environ["wsgi.input"].read(length).decode("utf-8")
        sent = 0
        for ws in list(clients):
            try:
                ws.send(text)
                sent += 1
            except WebSocketClosed:
                pass
        return _json(start_response, {"success": True, "sent": sent})
    if path == "/count":
        return _json(start_response, {"success": True, "count": len(clients)})
    return _json(start_response, {"success": True, "pid": os.getpid()})
