"""Module stdout and stderr reach the service's log, line by line, and never block the module."""

import logging
import os
import signal

from shmooze.client import ServiceClient
from shmooze.moduletype import python_module
from shmooze.protocol import Command
from shmooze.queue import Queue
from tests.helpers import ROOT, free_port, gone, start_service, wait_for, write_settings

CHATTY = str(ROOT / "tests" / "modules" / "chatty.py")


def test_output_is_logged_with_uid_and_pid(caplog):
    caplog.set_level(logging.INFO, logger="shmooze.hosting.moduleprocess")
    # (init_timeout: 20,000 lines logged before init's answer take over the default second on a busy machine)
    q = Queue([python_module("chatty", CHATTY, init_timeout=20)])
    q.start()
    try:
        # 200 KiB on each stream: far more than a pipe holds, so a service that did not read would block init.
        answer = q.dispatch(Command("add", {"type": "chatty", "args": {"lines": 10000}}))
        assert answer["success"], answer
        uid = answer["result"]["uid"]
        assert q.dispatch(Command("tell_module", {"uid": uid, "cmd": "say", "args": {"text": "bye"}}))["success"]

        def logged(text):
            return any(text in r.getMessage() for r in caplog.records)

        wait_for(lambda: logged("chatty says bye") and logged("chatty err 9999"), 10, what="module output in the log")
        out = [r for r in caplog.records if "chatty out" in r.getMessage()]
        assert len(out) == 10000, "every line, none lost"
        pid = q.status()["modules"][0]["pid"]
        assert f"module {uid} (chatty, pid {pid}): chatty out 0" in out[0].getMessage()
        assert any(r.levelno == logging.WARNING and "chatty err 0" in r.getMessage() for r in caplog.records)
    finally:
        q.stop()


def test_sigint_stops_the_service_through_the_ladder(tmp_path):
    path = write_settings(tmp_path / "settings.json", ports={"queue": free_port()},
                          services={"queue": "tests.apps:make_queue"})
    proc = start_service(path, "queue", tmp_path)
    try:
        port = int(__import__("json").loads(path.read_text())["ports"]["queue"])
        client = ServiceClient(f"http://127.0.0.1:{port}/", "queue")
        client.add(type="good")
        pid = client.status()["modules"][0]["pid"]
        os.kill(proc.pid, signal.SIGINT)
        proc.popen.wait(20)
        assert gone(pid)
        assert "stopped: rm (service stopping)" in proc.log()
    finally:
        proc.kill_everything()


def test_standalone_queue_in_a_few_lines(tmp_path):
    """examples/standalone_queue.py's pattern: serve_factory with no settings file."""
    from tests.helpers import PYTHON, Proc, port_open

    port = free_port()
    script = tmp_path / "app.py"
    script.write_text(
        "from shmooze.moduletype import python_module\n"
        "from shmooze.queue import Queue\n"
        "from shmooze.serve import serve_factory\n"
        f"T = [python_module('chatty', {CHATTY!r})]\n"
        f"serve_factory(lambda: Queue(T), port={port}, name='queue')\n")
    proc = Proc([PYTHON, str(script)], log_path=tmp_path / "app.log")
    try:
        wait_for(lambda: port_open(port), 20, what="the standalone queue")
        client = ServiceClient(f"http://127.0.0.1:{port}/", "queue")
        uid = client.add(type="chatty", args={"lines": 1})["uid"]
        assert client.queue() == [{"uid": uid, "type": "chatty"}]
        assert client.status()["service"] == "queue"
    finally:
        proc.stop()
        proc.kill_everything()
