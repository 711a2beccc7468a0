"""Access control through the gateway, with ``access_token`` set.

In-process (Werkzeug's test client, forwarding to a real local queue): state-changing
commands need ``Authorization: Bearer TOKEN`` (401 JSON without it), read-only ones stay
open, a batch mixing both needs the token, form content types are refused (415) so a
cross-site form cannot drive the queue. Live (gunicorn): WebSocket messages need
``token`` for state changes, a foreign Origin is refused (403) while ``allowed_origins``
is respected, and services listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import socket
import threading

import psutil
import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.test import Client

from shmooze.commands import declared
from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from shmooze.http.websocket import HandshakeError
from shmooze.queue import Queue
from shmooze.settings import Settings
from shmooze.testing import WebSocketClient
from tests.apps import TYPES
from tests.helpers import Stack

TOKEN = "tok-3f9a1c"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def queue_svc():
    svc = Queue(TYPES)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def gw(queue_svc):
    server = make_server("127.0.0.1", 0, service_app(queue_svc), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(Gateway(Settings({"ports": {"wsgi": 1, "queue": server.server_port}, "access_token": TOKEN})))
    server.shutdown()
    thread.join(5)


def post(client, body, headers=None, ctype="application/json", path="/queue"):
    resp = client.post(path, data=body if isinstance(body, (bytes, str)) else json.dumps(body),
                       content_type=ctype, headers=headers or {})
    assert resp.headers["Content-Type"] == "application/json"
    return resp.status_code, json.loads(resp.get_data()), resp.headers


# Harmless arguments that pass each command's argument check (unknown uids, unknown types).
ARGS = {"add": {"type": "nosuch"}, "rm": {"uids": []}, "mv": {"uids": []}, "set_bg": {"type": "nosuch"},
        "tell_module": {"uid": "nosuch", "cmd": "x"}, "tell_background": {"uid": "nosuch", "cmd": "x"},
        "ask_module": {"uid": "nosuch", "parameters": []}, "ask_background": {"uid": "nosuch", "parameters": []},
        "changes": {"since": 0, "timeout": 0}, "output": {"uid": "nosuch"}}


def changing(svc):
    return sorted(c for c in declared(type(svc)) if c not in svc.read_only_commands)


def test_the_split_between_open_and_state_changing_commands(queue_svc):
    assert set(changing(queue_svc)) == {"add", "rm", "mv", "set_bg", "tell_module", "tell_background"}


def test_state_changing_commands_need_the_token(gw, queue_svc):
    for cmd in changing(queue_svc):
        body = {"cmd": cmd, "args": ARGS.get(cmd, {})}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}, {"X-Token": TOKEN}):
            status, answer, resp_headers = post(gw, body, headers)
            assert status == 401, (cmd, headers, status, answer)
            assert answer["success"] is False and "access token" in answer["error"]
            assert resp_headers["WWW-Authenticate"] == "Bearer"
        status, answer, _ = post(gw, body, GOOD)
        assert status == 200 and isinstance(answer["success"], bool), (cmd, answer)  # reached the queue
    assert post(gw, {"cmd": "mv", "args": {"uids": []}}, GOOD)[:2] == (200, {"success": True})


def test_read_only_commands_stay_open(gw, queue_svc):
    for cmd in sorted(queue_svc.read_only_commands):
        status, answer, _ = post(gw, {"cmd": cmd, "args": ARGS.get(cmd, {})})
        assert status == 200, (cmd, status, answer)
        if cmd not in ("history", "ask_module", "ask_background", "output"):  # no log, no such module: an error
            assert answer["success"] is True, (cmd, answer)


def test_a_batch_mixing_both_needs_the_token(gw):
    batch = [{"cmd": "status"}, {"cmd": "mv", "args": {"uids": []}}, {"cmd": "queue"}]
    status, answer, _ = post(gw, batch)
    assert status == 401 and answer["success"] is False
    status, answers, _ = post(gw, batch, GOOD)
    assert status == 200 and [a["success"] for a in answers] == [True, True, True]
    status, answers, _ = post(gw, [{"cmd": "status"}, {"cmd": "queue"}, 5, {"nocmd": 1}])  # nothing to change
    assert status == 200 and [a["success"] for a in answers] == [True, True, False, False]
    status, _, _ = post(gw, [{"cmd": "status"}] * 50 + [{"cmd": "rm", "args": {"uids": []}}])
    assert status == 401


def test_body_that_is_not_json_is_400_not_401(gw):
    assert post(gw, b"{not json")[0] == 400
    assert post(gw, b"\xff\xfe")[0] == 400


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                                   "text/plain", "text/plain; charset=utf-8", ""])
@pytest.mark.parametrize("where", ["gateway", "gateway+token", "service"])
def test_form_content_types_are_refused(gw, queue_svc, ctype, where):
    """What a cross-site HTML form can send (no preflight) never reaches a command."""
    body = '{"cmd": "mv", "args": {"uids": []}}'
    if where == "service":
        client, path, headers = Client(service_app(queue_svc)), "/", {}
    else:
        client, path, headers = gw, "/queue", GOOD if where == "gateway+token" else {}
    resp = client.post(path, data=body, content_type=ctype or None, headers=headers)
    assert resp.status_code == 415, (ctype, where, resp.status_code)
    answer = json.loads(resp.get_data())
    assert answer["success"] is False and "application/json" in answer["error"]
    if where.startswith("gateway"):
        form = client.post(path, data={"cmd": "mv"}, headers=headers)  # a real urlencoded form post
        assert form.status_code == 415


# -- live: WebSocket and listening addresses ---------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("access"), {"queue": "tests.apps:make_queue"}, access_token=TOKEN,
               allowed_origins=["http://allowed.example"], gateway_workers=1) as stack:
        yield {"ports": stack.ports, "ws": stack.ws, "url": stack.url, "procs": stack.procs}


def ask(ws, msg):
    ws.send(json.dumps(msg))
    text = ws.receive(10)
    assert text is not None, f"no answer to {msg}"
    answer = json.loads(text)
    assert answer.get("id") == msg.get("id"), answer
    return answer


def test_websocket_messages_need_the_token_for_state_changes(live):
    with WebSocketClient.connect(live["ws"], timeout=5) as ws:
        refused = ask(ws, {"id": 1, "service": "queue", "cmd": "mv", "args": {"uids": []}})
        assert refused["success"] is False and "access token" in refused["error"]
        wrong = ask(ws, {"id": 2, "service": "queue", "cmd": "mv", "args": {"uids": []}, "token": "nope"})
        assert wrong["success"] is False and "access token" in wrong["error"]
        assert ask(ws, {"id": 3, "service": "queue", "cmd": "mv", "args": {"uids": []}, "token": TOKEN}) == \
            {"id": 3, "success": True}
        opened = ask(ws, {"id": 4, "service": "queue", "cmd": "status"})
        assert opened["success"] is True and opened["result"]["service"] == "queue"
        batch = [{"cmd": "queue"}, {"cmd": "rm", "args": {"uids": []}}]
        refused = ask(ws, {"id": 5, "service": "queue", "batch": batch})
        assert refused["success"] is False and "access token" in refused["error"]
        answers = ask(ws, {"id": 6, "service": "queue", "batch": batch, "token": TOKEN})
        assert [a["success"] for a in answers["answers"]] == [True, True]
        # the token of one message does not open the connection for the next
        again = ask(ws, {"id": 7, "service": "queue", "cmd": "rm", "args": {"uids": []}})
        assert again["success"] is False and "access token" in again["error"]
    with pytest.raises(requests.HTTPError) as info:  # and HTTP without the header, same gateway
        resp = requests.post(live["url"] + "queue", json={"cmd": "rm", "args": {"uids": []}}, timeout=5)
        resp.raise_for_status()
    assert info.value.response.status_code == 401


@pytest.mark.parametrize("origin,allowed", [("http://evil.example", False), ("https://allowed.example", False),
                                            ("http://allowed.example", True), ("null", False), (None, True),
                                            ("http://127.0.0.1:{port}", True), ("http://localhost.evil:{port}", False)])
def test_websocket_origin(live, origin, allowed):
    if origin is not None:
        origin = origin.format(port=live["ports"]["wsgi"])
    if allowed:
        with WebSocketClient.connect(live["ws"], origin=origin, timeout=5) as ws:
            assert ask(ws, {"id": 1, "service": "queue", "cmd": "status"})["success"] is True
    else:
        with pytest.raises(HandshakeError) as info:
            WebSocketClient.connect(live["ws"], origin=origin, timeout=5)
        assert info.value.status == 403
        assert json.loads(info.value.body)["success"] is False


def non_loopback_addresses() -> list[str]:
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                out.append(a.address)
    return out


@pytest.mark.parametrize("name", ["queue", "wsgi"])
def test_services_listen_on_loopback_only(live, name):
    port = live["ports"][name]
    proc = psutil.Process(live["procs"][name].pid)
    listening = [c for p in [proc, *proc.children(recursive=True)] for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening, f"nothing of {name} listens on {port}"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    for address in non_loopback_addresses():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"{name} answers on {address}:{port}"
