"""The gateway in-process (Werkzeug's test client), forwarding to a real local HTTP service."""

import json
import threading

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client

from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from shmooze.settings import Settings
from tests.helpers import ROOT, free_port
from tests.sample_service import Sample


@pytest.fixture(scope="module")
def backend():
    server = make_server("127.0.0.1", 0, service_app(Sample()), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)


def gateway(backend_port, **extra):
    data = {"ports": {"wsgi": 1, "sample": backend_port, "down": free_port()},
            "public": ["title", "ports"], "title": "T", "secret": "s",
            "static_path": str(ROOT / "tests" / "static"), "max_body_bytes": 2048, **extra}
    client = Client(Gateway(Settings(data)))
    client.ports = data["ports"]  # (what the test expects the gateway to serve)
    return client


def post(client, path, body, ctype="application/json"):
    resp = client.post(path, data=body if isinstance(body, bytes) else json.dumps(body), content_type=ctype)
    assert resp.headers["Content-Type"] == "application/json"
    return resp.status_code, json.loads(resp.get_data())


def test_forwards_commands_and_batches_unchanged(backend):
    c = gateway(backend)
    assert post(c, "/sample", {"cmd": "add", "args": {"a": 1, "b": 2}}) == (200, {"success": True, "result": 3})
    status, answers = post(c, "/sample", [{"cmd": "add", "args": {"a": 1}}, {"cmd": "nope"}])
    assert status == 200 and answers[0]["result"] == 1 and answers[1]["success"] is False


def test_service_transport_errors_pass_through(backend):
    assert post(gateway(backend), "/sample", b"{bad")[0] == 400


def test_settings_json_has_only_public_keys(backend):
    client = gateway(backend)
    resp = client.get("/settings.json")
    assert resp.status_code == 200
    assert json.loads(resp.get_data()) == {"title": "T", "ports": {"wsgi": 1, "sample": backend,
                                                                   "down": client.ports["down"]}}
    assert "secret" not in resp.get_data(as_text=True)


def test_static_files_and_index(backend):
    c = gateway(backend)
    assert b"<h1>hello</h1>" in c.get("/").get_data()
    assert c.get("/static/app.css").get_data() == b"body{}\n"
    resp = c.get("/static/../settings.py")
    assert resp.status_code == 404 and json.loads(resp.get_data())["success"] is False
    assert c.get("/static/nope.js").status_code == 404


def test_prefix_moves_services_and_settings(backend):
    c = gateway(backend, wsgi_prefix="/api/")
    assert post(c, "/api/sample", {"cmd": "add", "args": {"a": 4}})[1]["result"] == 4
    assert c.get("/api/settings.json").status_code == 200
    assert c.post("/sample", data="{}", content_type="application/json").status_code == 404
    assert b"hello" in c.get("/api/").get_data()


def test_unknown_service_is_404_json(backend):
    status, answer = post(gateway(backend), "/nosuch", {"cmd": "x"})
    assert status == 404 and "no service named 'nosuch'" in answer["error"] and "sample" in answer["error"]


def test_down_service_is_502_json(backend):
    status, answer = post(gateway(backend), "/down", {"cmd": "status"})
    assert status == 502 and "'down' is down" in answer["error"]


def test_edge_checks_at_the_gateway(backend):
    c = gateway(backend)
    resp = c.get("/sample")
    assert resp.status_code == 405 and json.loads(resp.get_data())["success"] is False
    assert post(c, "/sample", b'{"cmd": "status"}', "application/x-www-form-urlencoded")[0] == 415
    assert post(c, "/sample", {"cmd": "echo", "args": {"x": "y" * 4000}})[0] == 413
    assert c.post("/settings.json").status_code == 405


def test_hung_service_is_504_within_the_timeout():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # accepts connections, never answers
    try:
        c = Client(Gateway(Settings({"ports": {"wsgi": 1, "hung": listener.getsockname()[1]},
                                     "forward_timeout": 0.3})))
        status, answer = post(c, "/hung", {"cmd": "status"})
        assert status == 504 and "did not answer within 0.3 s" in answer["error"]
    finally:
        listener.close()
