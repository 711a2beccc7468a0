"""No orphans: when a queue or pool process dies by SIGKILL, its modules and their children go too."""

import os
import signal

import pytest

from shmooze.client import ServiceClient
from tests.helpers import free_port, gone, start_service, wait_for, write_settings

GRACE = 2.0  # seconds within which every module must be gone


def settings(tmp_path):
    return write_settings(tmp_path / "settings.json",
                          ports={"queue": free_port(), "pool": free_port()},
                          services={"queue": "tests.apps:make_queue", "pool": "tests.apps:make_pool"})


def start_modules(client):
    """One Python module with a child that ignores SIGTERM, one that ignores SIGTERM itself, one in bash."""
    uids = [client.add(type=t)["uid"] for t in ("child", "stubborn", "shout")]
    uid_child = uids[0]
    child_pid = wait_for(lambda: client.ask_module(uid=uid_child, parameters=["child_pid"]).get("child_pid"),
                         10, what="child pid")
    status = client.status()
    pids = [m["pid"] for m in status["modules"]]
    assert len(pids) == 3 and all(pids)
    return status, pids + [child_pid]


@pytest.mark.parametrize("service", ["queue", "pool"])
@pytest.mark.parametrize("victim", ["worker", "worker-and-master"])
def test_sigkill_of_the_service_ends_every_module(tmp_path, service, victim):
    path = settings(tmp_path)
    proc = start_service(path, service, tmp_path)
    try:
        from shmooze import settings as settings_mod

        port = settings_mod.read(path).ports[service]
        client = ServiceClient(f"http://127.0.0.1:{port}/", service, timeout=10)
        status, pids = start_modules(client)
        assert all(not gone(p) for p in pids)
        worker = status["pid"]
        watchdog = status["watchdog_pid"]
        if victim == "worker":
            os.kill(worker, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # the gunicorn master and its worker together
        wait_for(lambda: all(gone(p) for p in pids), GRACE, what=f"modules {pids} to end after SIGKILL")
        wait_for(lambda: gone(watchdog), GRACE, what="the guard to exit")
    finally:
        if proc.popen.poll() is None:
            proc.stop()
        proc.kill_everything()
