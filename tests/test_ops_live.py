"""Operations through real daemons: a pool and the gateway (two gevent workers) under gunicorn, with an
access token. Metrics at the gateway, module output in the run folder, ``shmz logs UID [-f]``."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shmooze.client import Client
from shmooze.testing import WebSocketClient
from tests.helpers import PYTHON, Proc, Stack, gone, wait_for

TOKEN = "s3cret-ops"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opslive")
    with Stack(tmp, {"pool": "tests.apps:make_ops_pool"}, down=["down"], public=["ports"], gateway_workers=2,
               access_token=TOKEN, run_path=str(tmp / "run"), stop_timeout=3) as stack:
        yield {"path": stack.path, "tmp": tmp, "url": stack.url, "client": Client(stack.url, token=TOKEN),
               "pool": stack.procs["pool"]}


def scrape(app) -> dict:
    resp = requests.get(app["url"] + "metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_need_the_token_and_are_read_only(app):
    assert requests.get(app["url"] + "metrics", timeout=10).status_code == 401
    wrong = requests.get(app["url"] + "metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["success"] is False
    assert requests.post(app["url"] + "metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10).status_code == 405


def test_metrics_are_whole_whichever_worker_answers(app):
    client = app["client"]
    before = scrape(app)
    base = value(before, "shmooze_commands_total", service="pool", command="add", outcome="ok") or 0
    uids = [client.pool.add(type="ops")["uid"] for _ in range(3)]
    # Many scrapes land on both gateway workers: each sees the service's own, whole count.
    for _ in range(6):
        samples = scrape(app)
        assert value(samples, "shmooze_commands_total", service="pool", command="add", outcome="ok") == base + 3
        assert value(samples, "shmooze_service_up", service="pool") == 1
        assert value(samples, "shmooze_service_up", service="down") == 0
        assert value(samples, "shmooze_modules_running", service="pool", type="ops") == 3
        assert value(samples, "shmooze_command_seconds_count", service="pool", command="add") >= 3
    client.pool.rm(uids=uids)
    samples = scrape(app)
    assert value(samples, "shmooze_module_ends_total", service="pool", type="ops", rung="rm") >= 3
    assert value(samples, "shmooze_modules_running", service="pool", type="ops") == 0


def test_push_figures_are_summed_over_workers(app):
    ws_url = app["url"].replace("http", "ws", 1) + "ws"
    sockets = [WebSocketClient.connect(ws_url, timeout=5) for _ in range(4)]
    try:
        for ws in sockets:
            ws.send(json.dumps({"id": 1, "subscribe": {"pool": None}}))
            assert json.loads(ws.receive(timeout=5))["id"] == 1
        wait_for(lambda: value(scrape(app), "shmooze_push_sessions") == 4, 10, interval=0.1, what="4 sessions")
        sent = value(scrape(app), "shmooze_push_events_sent_total") or 0
        uid = app["client"].pool.add(type="ops")["uid"]
        for ws in sockets:
            assert json.loads(ws.receive(timeout=5))["event"] == "change"
        wait_for(lambda: value(scrape(app), "shmooze_push_events_sent_total") >= sent + 4, 10, interval=0.1,
                 what="events sent counted")
        app["client"].pool.rm(uids=[uid])
    finally:
        for ws in sockets:
            ws.close()
    wait_for(lambda: value(scrape(app), "shmooze_push_sessions") == 0, 10, interval=0.1, what="sessions closed")


def shmz(app, *args, **kw):
    return subprocess.run([PYTHON, "-m", "shmooze.cli.shmz", "--url", app["url"], "--token", TOKEN, *args],
                          capture_output=True, text=True, timeout=30, **kw)


def test_module_output_in_the_run_folder_and_shmz_logs(app):
    client = app["client"]
    uid = client.pool.add(type="ops")["uid"]
    for i in range(5):
        client.pool.tell_module(uid=uid, cmd="say", args={"text": f"hello {i}"})
    path = app["tmp"] / "run" / "logs" / "modules" / "pool" / f"{uid}.log"
    wait_for(lambda: path.exists() and "hello 4" in path.read_text(), 10, what="the output file")
    proc = shmz(app, "logs", uid, "-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[3 line(s) no longer kept]", "hello 2", "hello 3", "hello 4"]
    assert shmz(app, "logs", "nosuch").returncode == 2
    # -f: lines printed after it started arrive as they are printed.
    follower = Proc([PYTHON, "-m", "shmooze.cli.shmz", "--url", app["url"], "logs", uid, "-f", "-n", "1"],
                    log_path=app["tmp"] / "follow.log")
    try:
        wait_for(lambda: "hello 4" in follower.log(), 10, what="the last line")
        client.pool.tell_module(uid=uid, cmd="say", args={"text": "followed line"})
        wait_for(lambda: "followed line" in follower.log(), 10, what="the followed line")
    finally:
        follower.kill_everything()
    client.pool.rm(uids=[uid])


def test_status_shows_figures_and_restarts(app):
    client = app["client"]
    uid = client.pool.add(type="crashy", args={"exit_after": 0.3, "exit_code": 2})["uid"]
    status = wait_for(lambda: (lambda s: s if any(m["uid"] == uid and m["restarts"] >= 1 for m in s["modules"])
                               else None)(client.pool.status()), 15, what="a restart")
    module = next(m for m in status["modules"] if m["uid"] == uid)
    assert module["policy"] == "on-failure" and module["rss_bytes"] > 0
    client.pool.rm(uids=[uid])
    wait_for(lambda: not client.pool.status()["restarting"], 10, what="no restart after rm")


def test_dashboard_routes(app):
    page = requests.get(app["url"] + "_shmooze/", timeout=10)
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert requests.get(app["url"] + "_shmooze", allow_redirects=False, timeout=10).status_code == 308
    info = requests.get(app["url"] + "_shmooze/services.json", timeout=10).json()
    assert info["services"] == ["down", "pool"] and info["token_required"] is True
    assert "shmooze" in requests.get(app["url"] + "_shmooze/shmooze.js", timeout=10).text
    # Restarting a service needs the token; here no supervisord runs the services, and it says so.
    assert requests.post(app["url"] + "_shmooze/restart", json={"service": "pool"}, timeout=10).status_code == 401
    answer = requests.post(app["url"] + "_shmooze/restart", json={"service": "pool"}, timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert answer["success"] is False and "not running" in answer["error"]
    assert requests.post(app["url"] + "_shmooze/restart", json={"service": "nosuch"}, timeout=10,
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_under_shmooze_run_status_figures_and_dashboard_restart(tmp_path):
    """Under supervisord (``shmooze run``): ``shmooze status`` shows the figures, the dashboard's restart
    restarts a service through supervisord."""
    from shmooze.settings import read as read_settings
    from tests.helpers import start_run
    from tests.test_deploy import app_settings, shmooze

    path = app_settings(tmp_path)
    data = json.loads(path.read_text())
    data["access_token"] = TOKEN
    path.write_text(json.dumps(data))
    settings = read_settings(path)
    run = start_run(path, tmp_path)
    try:
        url = f"http://127.0.0.1:{settings.ports['wsgi']}/"
        client = Client(url, token=TOKEN)
        uid = client.queue.add(type="good")["uid"]
        out = shmooze("status", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        assert "CPU%" in out.stdout and "MEMORY" in out.stdout and "RESTARTS" in out.stdout
        row = next(line for line in out.stdout.splitlines() if f"queue/{uid}" in line)
        assert "M " in row + " " and "%" in row, row
        old_pid = client.queue.status()["pid"]
        answer = requests.post(url + "_shmooze/restart", json={"service": "queue"}, timeout=60,
                               headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert answer == {"success": True, "result": {"restarted": "queue"}}
        new = wait_for(lambda: client.queue.status(), 20)
        assert new["pid"] != old_pid  # a new instance, which restores its queue from the journal
        restored = wait_for(lambda: client.queue.status()["modules"], 20, what="the queue restored")
        assert [m["uid"] for m in restored] == [uid]
        pids = run.remember_descendants()
        assert shmooze("stop", "--settings", str(path)).returncode == 0
        run.popen.wait(30)
        assert all(gone(p) for p in pids)
    finally:
        run.kill_everything()
