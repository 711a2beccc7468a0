"""An application written for the original framework (tests/original_app/) runs unchanged (issue 28).

Its volume service (a ``JSONCommandProcessor`` with generator coroutines, a ``Lock`` and ``json_query``
to the queue) runs as a program (``python -m``), its "top" service (a reader of the original's
``queue_log``) is named in ``services``, its queue takes the original's module classes and writes the
original's command log; the gateway, ``shmz`` and a page in headless Chromium reach all of them.
Then: the original's command log of a pool (failures, module commands, retention), and the
``environment`` setting under ``shmooze run`` and in the systemd units.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from shmooze import protocol
from shmooze import settings as settings_mod
from shmooze.client import Client, ServiceClient
from shmooze.errors import ServiceError, SettingsError
from tests.helpers import ROOT, Process, Stack, start_run, wait_for

pytestmark = pytest.mark.timeout(120)

SERVICES = {"queue": "tests.original_app.queues:make_queue", "top": "tests.original_app.top:Top"}


def log_rows(path, table="queue_log"):
    db = sqlite3.connect(path)
    try:
        rows = db.execute(f"SELECT pk, uid, namespace, timestamp, input_json, output_json FROM {table} ORDER BY pk")
        return [{"uid": u, "namespace": n, "timestamp": t, "input": json.loads(i), "output": json.loads(o)}
                for _, u, n, t, i, o in rows]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


@pytest.fixture(scope="module")
def radio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("radio")
    stack = Stack(tmp, SERVICES, down=["volume"], public=["ports"], gateway_workers=1, stop_timeout=3,
                  log_database_path=str(tmp / "radio.db"), static_path=str(ROOT / "tests" / "original_app" / "static"),
                  static_prefix="/")
    with stack:
        # The original's supervisord.conf started each service with `python -m app.service`.
        volume = Process([sys.executable, "-m", "tests.original_app.volume"], cwd=str(ROOT), name="volume",
                         env={**os.environ, "SHMOOZE_SETTINGS": str(stack.path)},
                         log_path=tmp / "volume.log")
        stack.procs["volume"] = volume
        volume.wait_port(stack.ports["volume"], 20)
        yield {"stack": stack, "client": Client(stack.url), "db": str(tmp / "radio.db"), "volume": volume}


def test_an_original_service_answers_through_the_gateway(radio):
    volume = radio["client"].volume
    assert volume.get_vol() == {"vol": 50}
    assert volume.set_vol(vol=70) == {"vol": 70}
    with pytest.raises(ServiceError, match="Volume out of range"):
        volume.set_vol(vol=500)
    with pytest.raises(ServiceError, match="Bad command."):
        volume.call("no_such_command")
    # The whole answer, as the original's processor built it.
    assert volume.post({"cmd": "get_vol"}) == {"success": True, "result": {"vol": 70}}
    assert volume.post({"cmd": "set_vol", "args": {"loud": 1}})["success"] is False  # a TypeError, as before
    # Commands wait on the lock and the loop without holding each other up: all of them ran.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda v: volume.set_vol(vol=v)["vol"], range(20)))
    assert done == list(range(20))
    assert sorted(volume.history()[-20:]) == list(range(20))  # a connection made in __init__, used on the loop
    # A command waiting on an Event holds nothing up: the set_vol that ends its wait runs meanwhile.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(volume.next_set)
        wait_for(lambda: volume.set_vol(vol=44) and waiting.done(), 10, what="next_set to end")
        assert waiting.result() == {"vol": 44}
    # The new services' built-ins are there too: status, and commands (the gateway learns the table).
    assert volume.status()["service"] == "volume"
    assert set(volume.commands()) >= {"get_vol", "set_vol", "announce", "both", "status"}


def test_json_query_calls_another_service_with_the_service_key(radio):
    client = radio["client"]
    answer = client.volume.announce(text="hello")
    assert answer["queue_length"] >= 1
    assert answer["uid"] in [m["uid"] for m in client.queue.queue()]
    assert client.volume.both() == {"vol": client.volume.get_vol()["vol"], "types": ["text"]}
    client.queue.rm(uids=[answer["uid"]])


def test_the_services_own_port_speaks_the_new_http_json(radio):
    stack = radio["stack"]
    settings = settings_mod.read(stack.path)
    own = ServiceClient.on_port(settings, "volume")  # signed with the service key, answers proven
    assert own.get_vol()["vol"] >= 0
    import requests

    # Unsigned, straight to the port: refused as every service refuses it.
    resp = requests.post(stack.direct("volume"), json={"cmd": "set_vol", "args": {"vol": 1}}, timeout=10)
    assert resp.status_code in (401, 403)


def test_shmz_calls_an_original_service(radio):
    proc = subprocess.run([sys.executable, "-m", "shmooze.cli.shmz", "--url", radio["stack"].url, "volume", "set_vol",
                           "vol=33"], capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"vol": 33}
    proc = subprocess.run([sys.executable, "-m", "shmooze.cli.shmz", "--url", radio["stack"].url, "volume", "set_vol",
                           "vol=333"], capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert proc.returncode != 0 and "Volume out of range" in proc.stderr


def test_the_queue_writes_the_original_log_and_the_reader_reads_it(radio):
    client, db = radio["client"], radio["db"]
    first = client.queue.add(type="text", args={"text": "song a"})["uid"]
    second = client.queue.add(type="text", args={"text": "song b"})["uid"]
    client.queue.mv(uids=[second, first])  # b plays, a is suspended
    assert client.queue.tell_module(uid=second, cmd="shout", args={"times": 2}) == "SONG BSONG B"
    with pytest.raises(ServiceError, match="whisper"):
        client.queue.tell_module(uid=second, cmd="whisper")
    with pytest.raises(ServiceError):
        client.queue.add(type="no_such_type")
    client.queue.rm(uids=[first, second])
    # The reader (an original service named in `services`) finds both played, from the original's table.
    top = wait_for(lambda: (t := client.top.top_played()) and len(t) >= 2 and t, 10, what="the reader's top list")
    assert {"text": "song a", "plays": 1} in top and {"text": "song b", "plays": 1} in top
    rows = wait_for(lambda: (r := log_rows(db)) and any(x["input"]["cmd"] == "rm" and x["namespace"] == "client-queue"
                                                           for x in r) and r, 10, what="the rm row")
    namespaces = {r["namespace"] for r in rows}
    assert {"client-queue", "queue-module", "module-instance"} <= namespaces
    client_rows = [r for r in rows if r["namespace"] == "client-queue"]
    add = next(r for r in client_rows if r["input"]["cmd"] == "add" and r["input"]["args"]["args"] == {"text": "song a"})
    assert add["uid"] is None and add["output"] == {"success": True, "result": {"uid": first}}
    failed = [r for r in client_rows if r["output"]["success"] is False]
    assert any(r["input"]["cmd"] == "tell_module" and "whisper" in r["output"]["error"] for r in failed)
    assert any(r["input"]["cmd"] == "add" and "no_such_type" in r["output"]["error"] for r in failed)
    assert any(r["input"]["cmd"] == "mv" for r in client_rows)
    module_cmds = [(r["uid"], r["input"]["cmd"]) for r in rows if r["namespace"] == "queue-module"]
    for cmd in ("init", "play", "suspend", "do_shout", "do_whisper", "rm"):
        assert (second if cmd != "suspend" else first, cmd) in module_cmds or (first, cmd) in module_cmds, cmd
    shout = next(r for r in rows if r["namespace"] == "queue-module" and r["input"]["cmd"] == "do_shout")
    assert shout["input"] == {"cmd": "do_shout", "args": {"times": 2}}
    assert shout["output"] == {"success": True, "result": "SONG BSONG B"}  # the module's whole answer
    whisper = next(r for r in rows if r["namespace"] == "queue-module" and r["input"]["cmd"] == "do_whisper")
    assert whisper["output"]["success"] is False
    updates = [r for r in rows if r["namespace"] == "module-instance" and r["uid"] == first]
    assert updates and updates[0]["input"]["cmd"] == "set_parameters" and updates[0]["output"] == {"success": True}
    assert all(len(r["timestamp"]) == 19 for r in rows)  # CURRENT_TIMESTAMP's form: 2026-01-02 03:04:05
    assert client.top.failures()  # the reader's own query of failures


def test_a_page_on_the_original_api_reaches_the_original_services(browser, radio):
    client = radio["client"]
    page = browser.new_page()
    try:
        page.goto(radio["stack"].url)
        page.wait_for_function("report.added !== null && report.vol !== null && report.announced !== null "
                               "&& report.error !== null")
        report = page.evaluate("report")
        assert report["vol"] == 30 and "Volume out of range" in str(report["error"])
        assert report["announced"]["uid"] in [m["uid"] for m in client.queue.queue()]
        # Whichever of the page's two adds came first plays, and the reader's list shows it.
        page.wait_for_function("report.top && report.top.some(function (r) { "
                               "return r.text === 'from the page' || r.text === 'announced from the page'; })")
        assert page.inner_text("#vol") == "volume 30"
    finally:
        page.close()
        uids = [m["uid"] for m in client.queue.queue()]
        client.queue.rm(uids=uids)


def test_the_original_bot_and_file_logger(radio, tmp_path):
    from shmooze.lib import bot, cmdlog

    url = radio["stack"].url + "volume"
    assert bot.request({"cmd": "set_vol", "args": {"vol": 12}}, url) == {"vol": 12}
    with pytest.raises(Exception, match="Volume out of range"):
        bot.request({"cmd": "set_vol", "args": {"vol": -1}}, url)
    logger = cmdlog.FileLogger(str(tmp_path / "commands.log"))
    logger.log({"sent": {"cmd": "get_vol"}})
    logger.log({"received": {"success": True}})
    assert [json.loads(line) for line in (tmp_path / "commands.log").read_text().splitlines()] == [
        {"sent": {"cmd": "get_vol"}}, {"received": {"success": True}}]


def test_a_reader_survives_a_fresh_database(tmp_path):
    """No queue_log yet: the original's Database logs the error and the reader answers an empty list."""
    with Stack(tmp_path, {"top": SERVICES["top"]}, public=["ports"], gateway_workers=1, stop_timeout=3,
               log_database_path=str(tmp_path / "fresh.db")) as stack:
        assert Client(stack.url).top.top_played() == []


def test_an_original_program_named_in_services_runs_unchanged(tmp_path):
    """The volume module, with its top-level service, signal handlers and ioloop.start(), imported by
    shmooze serve: its port serves, json_query works from the loop's own thread, and the framework stops it."""
    stack = Stack(tmp_path, {**SERVICES, "volume": "tests.original_app.volume:vol"}, public=["ports"],
                  gateway_workers=1, stop_timeout=3, log_database_path=str(tmp_path / "radio.db"))
    with stack:
        client = Client(stack.url)
        assert client.volume.set_vol(vol=5) == {"vol": 5}
        answer = client.volume.announce(text="from a service named in services")
        assert [m["uid"] for m in client.queue.queue()] == [answer["uid"]]
        client.queue.rm(uids=[answer["uid"]])
        assert client.volume.history() == [5]  # one instance: the module's own `vol`
        volume = stack.procs["volume"]
    log = volume.log()
    assert "Received signal" not in log  # its SIGTERM handler was not used: the framework stopped it
    assert "handlers of SIGTERM, SIGINT are not used" in log


# -- the original's command log of a pool: the setting, failures, retention -----------------------------

def test_the_setting_writes_a_pools_original_log_bounded_by_retention(tmp_path):
    from shmooze.moduletype import ModuleType
    from shmooze.pool import Pool
    from shmooze.serve import build_service

    class Text:  # the original's module class
        TYPE_STRING = "text"
        process = ["python", "-m", "tests.original_app.modules.text"]

    path = str(tmp_path / "pool.db")
    settings = settings_mod.Settings({"ports": {"pool": 1}, "services": {"pool": lambda: Pool([Text])},
                                      "log_database_path": path, "original_command_log": True, "journal": False})
    pool = build_service(settings, "pool")
    assert pool.types["text"] == ModuleType("text", ("python", "-m", "tests.original_app.modules.text"))
    pool.start()
    try:
        added = pool.dispatch(protocol.Command("add", {"type": "text", "args": {"text": "x", "fail_play": True}}))
        assert added["success"] is True  # (a failed play removes the module afterwards)
        wait_for(lambda: not pool.table.placed(), 10, what="the module that failed play to be removed")
        pool.original_log.flush()
        rows = log_rows(path, "pool_log")
        assert [r["namespace"] for r in rows if r["input"]["cmd"] == "add"] == ["client-pool"]
        play = next(r for r in rows if r["input"]["cmd"] == "play")
        assert play["namespace"] == "queue-module" and play["output"] == {"success": False,
                                                                 "error": "Exception: cannot play this one"}
        # Retention: an old row goes at the next prune, the rest stays; past max_bytes the oldest go.
        db = sqlite3.connect(path)
        db.execute("INSERT INTO pool_log (uid, namespace, timestamp, input_json, output_json) "
                   "VALUES (NULL, 'client-pool', '2000-01-01 00:00:00', '{}', '{}')")
        db.commit()
        db.close()
        writer = pool.original_log
        with sqlite3.connect(path, isolation_level=None) as conn:
            assert writer.prune(conn) == 1
            kept = conn.execute("SELECT COUNT(*) FROM pool_log").fetchone()[0]
            assert kept == len(rows)
            writer.max_bytes = 1
            assert writer.prune(conn) >= 1
            assert conn.execute("SELECT COUNT(*) FROM pool_log").fetchone()[0] < kept
    finally:
        pool.stop()


def test_without_the_setting_no_original_tables(tmp_path):
    from shmooze.pool import Pool
    from shmooze.serve import build_service

    path = str(tmp_path / "plain.db")
    settings = settings_mod.Settings({"ports": {"pool": 1}, "services": {"pool": lambda: Pool([])},
                                      "log_database_path": path, "journal": False})
    pool = build_service(settings, "pool")
    assert pool.original_log is None and pool.original.answer_hook(pool.lifecycle) is None
    pool.stop()


# -- environment per service -------------------------------------------------------------------------

ENVIRONMENT = {"queue": {"DISPLAY": ":42"}, "*": {"DISPLAY": ":1", "OFFICE": "radio \"east\" 100%"}}


def test_environment_reaches_the_service_and_its_modules_under_shmooze_run(tmp_path):
    from tests.helpers import free_port, write_settings

    ports = {"wsgi": free_port(), "queue": free_port(), "top": free_port()}
    path = write_settings(tmp_path / "settings.json", ports=ports, services=SERVICES, run_path=str(tmp_path / "run"),
                          log_database_path=str(tmp_path / "log.db"), stop_timeout=3, environment=ENVIRONMENT)
    run = start_run(path, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{ports['wsgi']}/")
        uid = client.queue.add(type="text", args={"text": "on screen"})["uid"]
        params = wait_for(lambda: (p := client.queue.ask_module(uid=uid, parameters=["display", "office"])) and p, 10)
        # The queue's own entry wins over "*"; "*" gives the rest (quotes and % as they are).
        assert params == {"display": ":42", "office": 'radio "east" 100%'}
        client.queue.rm(uids=[uid])
    finally:
        run.stop()


def test_environment_in_the_systemd_units_and_the_framework_variables_refused(tmp_path):
    from shmooze.deploy.runner import RunPaths, supervisord_conf, systemd_units

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"ports": {"wsgi": 1, "queue": 2, "top": 3}, "environment": ENVIRONMENT}))
    units = systemd_units(settings_mod.read(path))
    queue = next(text for name, text in units.items() if name.endswith("-queue.service"))
    top = next(text for name, text in units.items() if name.endswith("-top.service"))
    assert 'Environment="DISPLAY=:42"' in queue and 'Environment="DISPLAY=:1"' not in queue
    assert 'Environment="DISPLAY=:1"' in top
    assert 'Environment="OFFICE=radio \\"east\\" 100%%"' in top
    assert "Environment=PYTHONUNBUFFERED=1" in queue  # the framework's own stay
    conf = supervisord_conf(settings_mod.read(path), RunPaths(tmp_path / "run"))
    queue_program = conf[conf.index("[program:queue]"):conf.index("[program:top]")]
    assert """environment=PYTHONUNBUFFERED="1",DISPLAY=":42",OFFICE='radio "east" 100%%'""" in queue_program
    for own in ("SHMOOZE_SETTINGS", "PYTHONUNBUFFERED", "SUPERVISOR_ENABLED"):
        with pytest.raises(SettingsError, match="the framework sets that variable itself"):
            settings_mod.Settings({"ports": {"queue": 2}, "environment": {"queue": {own: "x"}}})
    with pytest.raises(SettingsError, match="supervisord cannot pass"):
        settings_mod.Settings({"ports": {"queue": 2}, "environment": {"queue": {"A": "it's \"both\""}}})


def test_the_porting_guide_tells_each_remaining_difference():
    guide = (ROOT / "docs" / "porting.md").read_text()
    for topic in ("shmooze.lib.service", "shmooze.lib.database", "shmooze.lib.bot", "json_query",
                  "### Commands run concurrently", "check_same_thread=False", "### A service that fails at start stops the run",
                  "no such table", "original_command_log", "queue_log", "module-instance", "queue-module",
                  '"environment": {"queue": {"DISPLAY": ":0"}}', "Queue(modules, backgrounds, log_path)"):
        assert topic in guide, topic
