"""The gateway's operator routes: ``{wsgi_prefix}metrics`` and the dashboard under
``{wsgi_prefix}_shmooze/``.

* ``GET metrics``: every service's figures in the Prometheus text format (:mod:`shmooze.http.metrics`);
  with an ``access_token`` set it needs ``Authorization: Bearer TOKEN``.
* ``GET _shmooze/``: the live dashboard (``dashboard.html`` and ``dashboard.js`` in the framework's
  static folder), a page built on ``shmooze.js`` and push only;
* ``GET _shmooze/services.json``: the services the page shows (even when ``ports`` is not public);
* ``POST _shmooze/restart`` ``{"service": NAME}``: restart a service through the run's supervisord
  (needs the token when one is set).

The gateway mounts these routes (:meth:`Dashboard.routes`) and passes in what they need: the
services' names, the access token, and two callables, one rendering the metrics and one restarting a
service. The dashboard knows nothing of the gateway.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from shmooze import protocol
from shmooze.access import AccessToken
from shmooze.errors import ShmoozeError
from shmooze.http.jsonapp import JSONHTTPError, json_response
from shmooze.settings import STATIC_DIR

log = logging.getLogger(__name__)

PAGE_FILES = {"": "dashboard.html", "dashboard.js": "dashboard.js", "dashboard.css": "dashboard.css",
              "shmooze.js": "shmooze.js"}

#: A route: a WSGI app that returns a Response (or raises a JSONHTTPError).
Route = Callable[[dict[str, Any], Callable[..., Any]], Any]


class Dashboard:
    """The operator routes of one gateway.

    ``metrics()`` renders every service's figures (body, content type); ``restart(name)`` restarts a
    service and returns once it answers, raising :class:`ShmoozeError` or ``OSError`` when it cannot;
    ``who(environ)`` names the client of a request (:mod:`shmooze.caller`), for the log of a restart.
    """

    def __init__(self, services: Iterable[str], access: AccessToken, app_name: str | None,
                 metrics: Callable[[], tuple[bytes, str]], restart: Callable[[str], Any],
                 who: Callable[[dict[str, Any]], str] = lambda environ: "unknown"):
        self.services = sorted(services)
        self.access = access
        self.app_name = app_name
        self.metrics = metrics
        self.restart = restart
        self.who = who

    def routes(self) -> dict[str, Route]:
        """Path under the gateway's prefix -> route."""
        found: dict[str, Route] = {"metrics": self._metrics, "_shmooze": _redirect_to_folder,
                                   "_shmooze/services.json": self._services, "_shmooze/restart": self._restart}
        for sub, filename in PAGE_FILES.items():
            found["_shmooze/" + sub] = _page_file(filename)
        return found

    def _check_token(self, request: Request, what: str) -> None:
        if self.access.required:
            self.access.check_bearer(request.headers.get("Authorization", ""), what)

    def _metrics(self, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
        request = Request(environ)
        _require_get(request, "metrics")
        self._check_token(request, "reading the metrics")
        body, content_type = self.metrics()
        return Response(body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"})

    def _services(self, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
        _require_get(Request(environ), "services.json")
        return json_response({"services": self.services, "token_required": self.access.required,
                              "app_name": self.app_name})

    def _restart(self, environ: dict[str, Any], start: Callable[..., Any]) -> Response:
        request = Request(environ)
        if request.method != "POST":
            raise JSONHTTPError(405, "restart a service with POST", {"Allow": "POST"})
        self._check_token(request, "a restart")
        try:
            name = json.loads(request.get_data(as_text=True) or "{}").get("service")
        except (ValueError, AttributeError):
            raise JSONHTTPError(400, 'the body must be {"service": NAME}') from None
        if name not in self.services:
            raise JSONHTTPError(404, f"no service named {protocol.short(str(name), 60)}")
        try:
            self.restart(name)
        except ShmoozeError as exc:
            return json_response(protocol.error(f"cannot restart {name}: {exc}"))
        except OSError as exc:
            return json_response(protocol.error(f"cannot restart {name}: {exc.strerror or exc}"))
        log.info("service %s restarted from the dashboard by %s", name, self.who(environ))
        return json_response(protocol.ok({"restarted": name}))


def _require_get(request: Request, what: str) -> None:
    if request.method not in ("GET", "HEAD"):
        raise JSONHTTPError(405, f"{what} is read with GET", {"Allow": "GET, HEAD"})


def _redirect_to_folder(environ: dict[str, Any], start: Callable[..., Any]) -> Response:
    request = Request(environ)
    return Response("", 308, {"Location": request.path + "/"})


def _page_file(filename: str) -> Callable[..., Response]:
    def serve(environ: dict[str, Any], start: Callable[..., Any]) -> Response:
        request = Request(environ)
        _require_get(request, "the dashboard")
        return send_from_directory(STATIC_DIR, filename, environ, max_age=0)

    return serve
