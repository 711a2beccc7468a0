"""Porting an application of the original framework: the wire details its clients and modules rely on.

Each test here is one difference that broke a port (issue 13): extra keys in commands, a trailing
slash on a service's URL, ``args`` always on module lines, error messages that say what is wrong,
a static folder at ``/`` that must never shadow the gateway's own routes.
"""

from __future__ import annotations

import json

import pytest
from werkzeug.test import Client

from shmooze.gateway import Gateway
from shmooze.httpjson import service_app
from shmooze.settings import Settings
from tests.sample_service import Sample
from tests.test_gateway import backend  # noqa: F401 - a fixture: the sample service on a real port


def post(client, body, path="/", content_type="application/json"):
    resp = client.post(path, data=json.dumps(body), content_type=content_type)
    return resp.status_code, json.loads(resp.get_data())


# -- commands ------------------------------------------------------------------------------

def test_extra_top_level_keys_are_ignored_and_arguments_stay_strict():
    client = Client(service_app(Sample()))
    assert post(client, {"cmd": "add", "args": {"a": 2}, "tag": 1}) == (200, {"success": True, "result": 2})
    assert post(client, [{"cmd": "nothing", "id": "x"}, {"cmd": "add", "args": {"a": 1, "zz": 2}, "tag": 3}]) == (
        200, [{"success": True}, {"success": False,
                                  "error": "add: unknown argument 'zz' (takes: a, b)"}])


def test_a_nested_type_error_says_which_part_is_wrong():
    """It once said "argument 'parameters' must be an object, not an object"."""
    from shmooze.queue import Queue

    client = Client(service_app(Queue([])))
    status, answer = post(client, {"cmd": "queue", "args": {"parameters": {"text": "spoken"}}})
    assert status == 200 and answer["success"] is False
    assert answer["error"] == ("queue: argument 'parameters' must be an object of lists of strings, "
                               "but parameters['text'] is a string")
    _, answer = post(client, {"cmd": "queue", "args": {"parameters": {"text": ["a", 2]}}})
    assert answer["error"].endswith("but parameters['text'][1] is a number")
    _, answer = post(client, {"cmd": "queue", "args": {"parameters": []}})
    assert answer["error"].endswith("must be an object of lists of strings, not a list")


def test_module_lines_always_carry_args():
    from shmooze import protocol

    assert protocol.encode_line(protocol.Command("init").to_json()) == b'{"cmd":"init","args":{}}\n'
    assert protocol.encode_line(protocol.Command("do_x", {"a": 1}).to_json()) == b'{"cmd":"do_x","args":{"a":1}}\n'


# -- the gateway -----------------------------------------------------------------------------

@pytest.fixture
def app_at_root(tmp_path, backend):
    """An application as the original framework laid it out: its static folder served at ``/``,
    holding a ``settings.json`` that links to the real settings and a stray ``ws`` file."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>my app</h1>")
    (static / "app.js").write_text("// app")
    (static / "ws").write_text("not the WebSocket")
    data = {"ports": {"wsgi": 1, "sample": backend}, "public": ["ports", "title"], "title": "T",
            "api_key": "SECRET-KEY", "static_prefix": "/", "static_path": str(static)}
    real = tmp_path / "settings.json"
    real.write_text(json.dumps(data))
    (static / "settings.json").symlink_to(real)
    (static / "copy").mkdir()
    (static / "copy" / "s.json").symlink_to(real)
    from shmooze import settings

    return Client(Gateway(settings.read(real)))


def test_static_folder_at_root_never_shadows_the_gateways_routes(app_at_root):
    c = app_at_root
    resp = c.get("/settings.json")
    assert resp.status_code == 200
    assert sorted(json.loads(resp.get_data())) == ["ports", "title"]  # the public keys, not the file
    assert b"SECRET-KEY" not in resp.get_data()
    resp = c.get("/ws")  # the WebSocket endpoint, not the file
    assert resp.status_code == 400 and "WebSocket" in json.loads(resp.get_data())["error"]
    assert post(c, {"cmd": "add", "args": {"a": 4}}, path="/sample") == (200, {"success": True, "result": 4})
    # The rest of the folder is served as before.
    assert c.get("/").get_data() == b"<h1>my app</h1>" and c.get("/app.js").get_data() == b"// app"
    assert c.get("/shmooze.js").status_code == 200


def test_the_settings_file_is_never_served_from_a_static_folder(app_at_root):
    resp = app_at_root.get("/copy/s.json")
    assert resp.status_code == 404 and b"SECRET-KEY" not in resp.get_data()


def test_a_trailing_slash_reaches_the_service(app_at_root):
    assert post(app_at_root, {"cmd": "add", "args": {"a": 5}}, path="/sample/") == (200, {"success": True, "result": 5})
    assert post(app_at_root, [{"cmd": "nothing"}], path="/sample/", content_type="text/json") == (
        200, [{"success": True}])
