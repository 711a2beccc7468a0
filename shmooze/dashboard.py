"""The gateway's operator routes: ``{wsgi_prefix}metrics`` and the dashboard under
``{wsgi_prefix}_shmooze/``.

* ``GET metrics``: every service's figures in the Prometheus text format (:mod:`shmooze.metrics`);
  with an ``access_token`` set it needs ``Authorization: Bearer TOKEN``.
* ``GET _shmooze/``: the live dashboard (``dashboard.html`` and ``dashboard.js`` in the framework's
  static folder), a page built on ``shmooze.js`` and push only;
* ``GET _shmooze/services.json``: the services the page shows (even when ``ports`` is not public);
* ``POST _shmooze/restart`` ``{"service": NAME}``: restart a service through the run's supervisord
  (needs the token when one is set).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from shmooze import metrics, protocol
from shmooze.httpjson import JSONHTTPError, json_response
from shmooze.settings import STATIC_DIR

if TYPE_CHECKING:
    from shmooze.gateway import Gateway

log = logging.getLogger(__name__)

PAGE_FILES = {"": "dashboard.html", "dashboard.js": "dashboard.js", "dashboard.css": "dashboard.css",
              "shmooze.js": "shmooze.js"}


def add_routes(gateway: Gateway) -> None:
    gateway.routes["metrics"] = lambda environ, start: _metrics(gateway, environ, start)
    gateway.routes["_shmooze"] = _redirect_to_folder
    for sub, filename in PAGE_FILES.items():
        gateway.routes["_shmooze/" + sub] = _page_file(filename)
    gateway.routes["_shmooze/services.json"] = lambda environ, start: _services(gateway, environ, start)
    gateway.routes["_shmooze/restart"] = lambda environ, start: _restart(gateway, environ, start)


def _require_get(request: Request, what: str) -> None:
    if request.method not in ("GET", "HEAD"):
        raise JSONHTTPError(405, f"{what} is read with GET", {"Allow": "GET, HEAD"})


def _check_bearer(gateway: Gateway, request: Request) -> None:
    if gateway.token is None:
        return
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not gateway.token_ok(given):
        raise JSONHTTPError(401, "this needs the access token (Authorization: Bearer TOKEN)",
                            {"WWW-Authenticate": "Bearer"})


def _metrics(gateway: Gateway, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
    request = Request(environ)
    _require_get(request, "metrics")
    _check_bearer(gateway, request)
    body, content_type = metrics.render(metrics.gateway_stats().registry(gateway.proxies))
    return Response(body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"})


def _redirect_to_folder(environ: dict[str, Any], start: Callable[..., Any]) -> Response:
    request = Request(environ)
    return Response("", 308, {"Location": request.path + "/"})


def _page_file(filename: str) -> Callable[..., Response]:
    def serve(environ: dict[str, Any], start: Callable[..., Any]) -> Response:
        request = Request(environ)
        _require_get(request, "the dashboard")
        return send_from_directory(STATIC_DIR, filename, environ, max_age=0)

    return serve


def _services(gateway: Gateway, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
    request = Request(environ)
    _require_get(request, "services.json")
    settings = gateway.settings
    return json_response({"services": sorted(gateway.proxies), "token_required": gateway.token is not None,
                          "app_name": settings.get("app_name") if "app_name" in settings.public() else None})


def _restart(gateway: Gateway, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
    request = Request(environ)
    if request.method != "POST":
        raise JSONHTTPError(405, "restart a service with POST", {"Allow": "POST"})
    _check_bearer(gateway, request)
    try:
        name = json.loads(request.get_data(as_text=True) or "{}").get("service")
    except (ValueError, AttributeError):
        raise JSONHTTPError(400, 'the body must be {"service": NAME}') from None
    if name not in gateway.proxies:
        raise JSONHTTPError(404, f"no service named {protocol.short(str(name), 60)}")
    from shmooze import deploy
    from shmooze.errors import ShmoozeError

    try:
        deploy.restart(gateway.settings, [name])
    except ShmoozeError as exc:
        return json_response(protocol.error(f"cannot restart {name}: {exc}"))
    except OSError as exc:
        return json_response(protocol.error(f"cannot restart {name}: {exc.strerror or exc}"))
    log.info("service %s restarted from the dashboard", name)
    return json_response(protocol.ok({"restarted": name}))
