"""The dashboard's routes (shmooze.gateway.dashboard) on their own: they take the services, the access token
and two callables (the metrics, a restart) from whoever mounts them, and need no gateway."""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from shmooze.access import AccessToken
from shmooze.errors import ShmoozeError
from shmooze.gateway.dashboard import Dashboard
from shmooze.http.jsonapp import JSONHTTPError

TOKEN = "Dash-Tok-9"


def call(routes: dict[str, Any], name: str, method: str = "GET", body: Any = None, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    environ = EnvironBuilder(path="/" + name, method=method, headers=headers,
                             data=json.dumps(body) if body is not None else None).get_environ()
    return routes[name](environ, lambda *args: None)


def test_the_dashboard_uses_only_what_it_is_given():
    restarted: list[str] = []

    def restart(name: str) -> None:
        if name == "pool":
            raise ShmoozeError("not running")
        restarted.append(name)

    routes = Dashboard(["queue", "pool"], AccessToken(TOKEN), "Jukebox",
                       lambda: (b"up 1\n", "text/plain; version=0.0.4"), restart).routes()
    listed = json.loads(call(routes, "_shmooze/services.json").get_data())
    assert listed == {"services": ["pool", "queue"], "token_required": True, "app_name": "Jukebox"}

    for name, method in (("metrics", "GET"), ("_shmooze/restart", "POST")):
        with pytest.raises(JSONHTTPError) as refused:
            call(routes, name, method, {"service": "queue"}, token="wrong")
        assert refused.value.code == 401 and "access token" in refused.value.message
        assert refused.value.extra_headers == {"WWW-Authenticate": "Bearer"}
    assert restarted == []

    metrics = call(routes, "metrics", token=TOKEN)
    assert metrics.get_data() == b"up 1\n" and metrics.headers["Content-Type"].startswith("text/plain")
    answer = json.loads(call(routes, "_shmooze/restart", "POST", {"service": "queue"}, token=TOKEN).get_data())
    assert answer == {"success": True, "result": {"restarted": "queue"}} and restarted == ["queue"]
    failed = json.loads(call(routes, "_shmooze/restart", "POST", {"service": "pool"}, token=TOKEN).get_data())
    assert failed["success"] is False and failed["error"] == "cannot restart pool: not running"
    with pytest.raises(JSONHTTPError) as unknown:
        call(routes, "_shmooze/restart", "POST", {"service": "nosuch"}, token=TOKEN)
    assert unknown.value.code == 404 and restarted == ["queue"]


def test_without_a_token_the_metrics_are_open():
    routes = Dashboard([], AccessToken(None), None, lambda: (b"", "text/plain"), lambda name: None).routes()
    assert call(routes, "metrics").status_code == 200
    assert json.loads(call(routes, "_shmooze/services.json").get_data())["token_required"] is False
