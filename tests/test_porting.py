"""Porting an application of the original framework: the wire details its clients and modules rely on.

Each test here is one difference that broke a port (issue 13): extra keys in commands, a trailing
slash on a service's URL, ``args`` always on module lines, error messages that say what is wrong,
a static folder at ``/`` that must never shadow the gateway's own routes.
"""

from __future__ import annotations

import json
import sys

import pytest
from werkzeug.test import Client

from shmooze.gateway.app import Gateway
from shmooze.http.jsonapp import service_app
from tests.helpers import wait_for
from tests.sample_service import Sample
from tests.test_gateway import backend  # noqa: F401 - a fixture: the sample service on a real port

KEY = "porting-test-service-key-0123456789"


@pytest.fixture(scope="module")
def keyed_backend():
    """The sample service on a real port, guarded with the service key (settings from a file have one)."""
    import threading

    from werkzeug.serving import make_server

    from shmooze.access import ServiceGuard
    from shmooze.http.jsonapp import service_app
    from tests.sample_service import Sample

    service = Sample()
    server = make_server("127.0.0.1", 0, service_app(service, guard=ServiceGuard(service, KEY.encode())), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(5)


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
                               "but parameters['text'] is a string, not a list of strings")
    _, answer = post(client, {"cmd": "queue", "args": {"parameters": {"text": ["a", 2]}}})
    assert answer["error"].endswith("but parameters['text'][1] is a number, not a string")
    _, answer = post(client, {"cmd": "queue", "args": {"parameters": []}})
    assert answer["error"].endswith("must be an object of lists of strings, not a list")


def test_module_lines_always_carry_args():
    from shmooze import protocol

    assert protocol.encode_line(protocol.Command("init").to_json()) == b'{"cmd":"init","args":{}}\n'
    assert protocol.encode_line(protocol.Command("do_x", {"a": 1}).to_json()) == b'{"cmd":"do_x","args":{"a":1}}\n'


# -- the gateway -----------------------------------------------------------------------------

@pytest.fixture
def app_at_root(tmp_path, keyed_backend):
    """An application as the original framework laid it out: its static folder served at ``/``,
    holding a ``settings.json`` that links to the real settings and a stray ``ws`` file."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>my app</h1>")
    (static / "app.js").write_text("// app")
    (static / "ws").write_text("not the WebSocket")
    data = {"ports": {"wsgi": 1, "sample": keyed_backend}, "public": ["ports", "title"], "title": "T",
            "api_key": "SECRET-KEY", "service_key": KEY, "static_prefix": "/", "static_path": str(static)}
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


def test_settings_json_is_served_with_a_static_folder_at_root_and_no_such_file(app_at_root, tmp_path):
    (tmp_path / "static" / "settings.json").unlink()  # (it answered 404 then, the static folder coming first)
    resp = app_at_root.get("/settings.json")
    assert resp.status_code == 200 and sorted(json.loads(resp.get_data())) == ["ports", "title"]


def test_the_settings_file_is_never_served_from_a_static_folder(app_at_root):
    resp = app_at_root.get("/copy/s.json")
    assert resp.status_code == 404 and b"SECRET-KEY" not in resp.get_data()


def test_a_trailing_slash_reaches_the_service(app_at_root):
    assert post(app_at_root, {"cmd": "add", "args": {"a": 5}}, path="/sample/") == (200, {"success": True, "result": 5})
    assert post(app_at_root, [{"cmd": "nothing"}], path="/sample/", content_type="text/json") == (
        200, [{"success": True}])


# -- modules on the original API ---------------------------------------------------------------

def test_original_api_module_with_a_thread_runs_its_own_code_after_rm(parent, tmp_path):
    from tests.helpers import ROOT

    marker = tmp_path / "marker"
    parent.spawn([sys.executable, str(ROOT / "tests" / "modules" / "original_api.py")])
    assert parent.send("init", {"marker": str(marker)}) == {"success": True}
    parent.wait_param("status", "ready")
    assert parent.send("play") == {"success": True}
    parent.wait_update(lambda m: m.get("args", {}).get("parameters", {}).get("beats", 0) >= 5)
    # packet.good() of recv_update_resp's result (None: the service's answer had none).
    assert parent.send("do_confirmed") == {"success": True, "result": {"success": True}}
    parent.wait_param("confirmed", True)
    assert parent.send("rm") == {"success": True}
    assert parent.wait_exit() == 0  # ended by its own code, not by a signal
    assert marker.read_text().startswith("cleaned up after ")
    assert int(marker.read_text().split()[3]) >= 5
    assert not [u for u in parent.updates if "raw" in u]  # the thread's lines never mixed with others


def test_the_new_module_class_still_ends_at_once_after_rm(parent, tmp_path):
    script = tmp_path / "new_api.py"
    marker = tmp_path / "marker"
    script.write_text(
        "from shmooze_module import Module\n"
        "Module.main()\n"
        f"open({str(marker)!r}, 'w').write('after main')\n")
    parent.spawn([sys.executable, str(script)])
    assert parent.send("init") == {"success": True}
    assert parent.send("rm") == {"success": True}
    assert parent.wait_exit() == 0
    assert not marker.exists()


def test_poller_cooperates_with_other_bases(parent):
    import threading

    import shmooze_module

    class Threaded(shmooze_module.JSONParentPoller, threading.Thread):
        def __init__(self, **kw):
            super().__init__(**kw)

        def run(self):
            self.ran = True

    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "m", Threaded(host=parent.host, cmd_port=parent.cmd_port, update_port=parent.update_port)))
    t.start()
    parent.accept()
    t.join(10)
    m = holder["m"]
    try:
        m.start()  # Thread.__init__ ran
        m.join(10)
        assert m.ran and m.connection is m
    finally:
        m.close()


def test_original_connection_names_in_process(parent):
    """recv_cmd, send_resp, send_update (a dict, or cmd and args), recv_update_resp and packet."""
    import threading

    import shmooze_module
    from shmooze.lib import packet
    from shmooze.modules import assert_success

    assert packet.good is shmooze_module.good is shmooze_module.packet.good and assert_success is packet.assert_success
    assert packet.good() == {"success": True} and packet.good([1]) == {"success": True, "result": [1]}
    assert packet.error("no") == {"success": False, "error": "no"}
    assert packet.assert_success({"success": True, "result": 3}) == 3
    with pytest.raises(Exception, match="^nope$"):
        packet.assert_success({"success": False, "error": "nope"})
    with pytest.raises(Exception, match="malformed"):
        packet.assert_success([1])

    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault("c", shmooze_module.ParentConnection(
        host=parent.host, cmd_port=parent.cmd_port, update_port=parent.update_port)))
    t.start()
    parent.accept()
    t.join(10)
    conn = holder["c"]
    try:
        parent.send_raw(b'{"cmd":"do_x","args":{"a":1}}')
        assert conn.recv_cmd() == {"cmd": "do_x", "args": {"a": 1}}
        conn.send_resp(packet.good("done"))
        assert parent.read_answer() == {"success": True, "result": "done"}
        conn.send_update({"cmd": "set_parameters", "args": {"parameters": {"a": 1}}})
        conn.send_update("unset_parameters", {"parameters": ["a"]})
        parent.wait_update(lambda m: m.get("cmd") == "unset_parameters")
        assert parent.updates[-2:] == [{"cmd": "set_parameters", "args": {"parameters": {"a": 1}}},
                                       {"cmd": "unset_parameters", "args": {"parameters": ["a"]}}]
        assert conn.recv_update_resp() is None and conn.recv_update_resp() is None
        parent.upd.write_line(b'{"success":false,"error":"refused"}')
        with pytest.raises(Exception, match="refused"):
            conn.recv_update_resp()
        parent.close_cmd()
        with pytest.raises(shmooze_module.CommandStreamClosed):
            conn.recv_cmd()
    finally:
        conn.close()


def test_queue_sends_args_on_every_module_line(make_queue):
    from shmooze.moduletype import python_module
    from tests.helpers import ROOT

    q = make_queue([python_module("strict", str(ROOT / "tests" / "modules" / "strict_args.py"),
                                  rm_timeout=1, term_timeout=1)])
    uid = q.add("strict")  # init with no args: refused before, were it sent as {"cmd": "init"}
    assert q.ok("tell_module", uid=uid, cmd="ping") == {"cmd": "do_ping", "args": {}}
    assert q.ok("tell_module", uid=uid, cmd="ping", args={"n": 1}) == {"cmd": "do_ping", "args": {"n": 1}}
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] in ("exited", "rm")


def test_original_api_module_in_a_queue_ends_by_itself_after_rm(make_queue, tmp_path):
    from shmooze.moduletype import python_module
    from shmooze.system import ladder
    from tests.helpers import ROOT

    marker = tmp_path / "marker"
    q = make_queue([python_module("beater", str(ROOT / "tests" / "modules" / "original_api.py"),
                                  rm_timeout=5, term_timeout=1)])
    uid = q.add("beater", marker=str(marker))
    q.wait_param(uid, "beats")  # on top of the queue: playing, and its thread counts
    q.ok("rm", uids=[uid])
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.RM  # no signal was needed
    assert marker.read_text().startswith("cleaned up after ")


# -- the demo's module on the original API -----------------------------------------------------

def banner_queue(make_queue):
    from jukebox.app import QUEUE_TYPES

    banner = next(t for t in QUEUE_TYPES if t.name == "banner")
    return make_queue([banner, next(t for t in QUEUE_TYPES if t.name == "countdown")])


def test_the_demos_banner_scrolls_pauses_and_leaves_by_itself(make_queue):
    from shmooze.system import ladder

    q = banner_queue(make_queue)
    uid = q.add("banner", text="hi", passes=1)  # 27 frames, about 3 s
    assert q.wait_param(uid, "progress") > 0  # playing on top: the thread draws
    other = q.add("countdown", seconds=60)
    q.ok("mv", uids=[other])  # the countdown on top: the banner pauses
    wait_for(lambda: q.param(uid, "state") == "paused", 10, what="the banner to pause")
    q.ok("rm", uids=[other])
    assert q.ok("tell_module", uid=uid, cmd="again") == 0
    snap = q.ended(uid, timeout=30)  # every frame shown, then it left the queue itself
    assert snap["ended_by"] == ladder.EXITED
    assert q.ok("queue") == []


def test_the_demos_banner_cleans_up_after_rm(make_queue, caplog):
    import logging

    from shmooze.system import ladder

    caplog.set_level(logging.INFO, logger="shmooze.hosting.moduleprocess")  # the module's output is logged there
    q = banner_queue(make_queue)
    uid = q.add("banner", text="a long text that takes a while to scroll by", passes=5)
    q.wait_param(uid, "progress")
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] == ladder.RM  # its own code ended it: no signal
    wait_for(lambda: "banner: screen cleared" in caplog.text, 10, what="the banner's cleanup after its loop")
