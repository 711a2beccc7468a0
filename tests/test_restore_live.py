"""The queue comes back after every kind of restart of a real ``shmooze run``, and watchers are told.

SIGKILL of the queue's worker, ``shmooze restart queue``, ``shmooze stop`` + ``run``, SIGKILL of
every process of the run at once: each time the same uids in the same order with the same
background. ``shmooze stop --clear`` forgets them.
"""

import json
import os
import signal
import subprocess

import pytest

from shmooze.client import Client
from shmooze.errors import ShmoozeError
from shmooze.settings import read as read_settings
from tests.helpers import PYTHON, Proc, free_port, gone, port_open, shmooze_argv, start_run, wait_for, write_settings

pytestmark = pytest.mark.timeout(300)


def shmooze(*args, timeout=90):
    return subprocess.run(shmooze_argv(*args), capture_output=True, text=True, timeout=timeout)


def test_queue_survives_every_restart(tmp_path):
    ports = {"wsgi": free_port(), "queue": free_port()}
    path = write_settings(tmp_path / "settings.json", ports=ports, run_path=str(tmp_path / "run"),
                          services={"queue": "tests.apps:make_queue"}, journal_path=str(tmp_path / "state"),
                          stop_timeout=5)
    settings = read_settings(path)
    client = Client(f"http://127.0.0.1:{ports['wsgi']}/", timeout=20)
    runs = [start_run(path, tmp_path, "run1")]
    watcher = None
    try:
        uids = [client.queue.add(type="good", args={"n": i})["uid"] for i in range(4)]
        bg = client.queue.set_bg(type="bg")["uid"]
        client.queue.mv(uids=[uids[3], uids[1]])
        want = ([uids[3], uids[1], uids[0], uids[2]], bg)

        def state():
            status = client.queue.status()
            return [m["uid"] for m in client.queue.queue()], (client.queue.bg() or {}).get("uid"), status

        def written():
            _, _, status = state()
            return status["journal"]["pending"] == 0

        def restored(old_pid):
            def check():
                try:
                    order, background, status = state()
                except ShmoozeError:  # the queue's new worker is not answering yet
                    return False
                return status["pid"] != old_pid and not status["restoring"] and (order, background) == want \
                    and status
            return check

        order, background, status = state()
        assert (order, background) == want
        wait_for(written, 10, what="the journal to be written")

        # 1. SIGKILL of the queue's worker: gunicorn starts another, which restores the queue.
        watcher = Proc([PYTHON, "-m", "shmooze.cli.shmz", "--url", client.url, "watch", "queue"],
                       log_path=tmp_path / "watch.log")

        def watch_lines():
            return [json.loads(line) for line in watcher.log().splitlines() if line.startswith("{")]

        def watching():  # a change now shows that the watcher holds a version of this instance
            client.queue.mv(uids=want[0])
            return any(e.get("kind") == "moved" for e in watch_lines())
        wait_for(watching, 30, interval=0.5, what="shmz watch to print a change")
        old_modules = [m["pid"] for m in status["modules"]]
        os.kill(status["pid"], signal.SIGKILL)
        status = wait_for(restored(status["pid"]), 60, interval=0.2, what="the queue back after SIGKILL")
        assert all(gone(p) for p in old_modules)  # the old modules went with their worker
        assert not set(old_modules) & {m["pid"] for m in status["modules"]}
        wait_for(lambda: any(e.get("kind") == "reset" for e in watch_lines()), 30, interval=0.2,
                 what="shmz watch to print a reset")
        assert watcher.popen.poll() is None  # it kept watching across the restart
        watcher.stop(timeout=10)
        watcher = None

        # 2. shmooze restart queue
        out = shmooze("restart", "queue", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        status = wait_for(restored(status["pid"]), 60, interval=0.2, what="the queue back after restart")

        # 3. shmooze stop, then shmooze run
        out = shmooze("stop", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        runs[-1].popen.wait(30)
        runs.append(start_run(path, tmp_path, "run2"))
        status = wait_for(restored(status["pid"]), 60, interval=0.2, what="the queue back after stop + run")

        # 4. SIGKILL of every process of the run at once: nothing gets to close anything.
        wait_for(written, 10, what="the journal to be written")
        runs[-1].kill_everything()
        wait_for(lambda: not port_open(ports["queue"]) and not port_open(ports["wsgi"]), 30)
        wait_for(lambda: all(gone(p) for p in runs[-1].seen), 30, what="every process of the run to end")
        runs.append(start_run(path, tmp_path, "run3"))
        status = wait_for(restored(status["pid"]), 60, interval=0.2, what="the queue back after SIGKILL of the run")

        # 5. shmooze stop --clear forgets it.
        out = shmooze("stop", "--clear", "--settings", str(path))
        assert out.returncode == 0 and "1 journal(s) removed" in out.stdout, out.stdout + out.stderr
        runs[-1].popen.wait(30)
        assert not (tmp_path / "state" / "queue.journal").exists()
        runs.append(start_run(path, tmp_path, "run4"))
        assert wait_for(lambda: (s := client.queue.status()) and not s["restoring"] and s, 30)["modules"] == []
        assert client.queue.queue() == [] and client.queue.bg() is None
        out = shmooze("stop", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        runs[-1].popen.wait(30)
        assert not port_open(settings.ports["wsgi"])
    finally:
        if watcher is not None:
            watcher.kill_everything()
        for run in runs:
            run.kill_everything()
