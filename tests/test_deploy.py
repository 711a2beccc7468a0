"""``shmooze run`` / ``status`` / ``stop`` / ``restart`` end to end, and the single-instance guard."""

import json
import os
import signal
import subprocess

import pytest

from shmooze.client import Client
from shmooze.deploy.runner import InstanceLock, RunPaths, is_locked
from shmooze.settings import read as read_settings
from tests.helpers import free_port, gone, port_open, shmooze_argv, start_run, wait_for, write_settings


def app_settings(tmp_path):
    ports = {"wsgi": free_port(), "queue": free_port(), "volume": free_port()}
    return write_settings(tmp_path / "settings.json", ports=ports, run_path=str(tmp_path / "run"),
                          services={"queue": "tests.apps:make_queue", "volume": "jukebox.volume:Volume"},
                          log_database_path=str(tmp_path / "log.db"), stop_timeout=5)


def shmooze(*args, timeout=60):
    return subprocess.run(shmooze_argv(*args), capture_output=True, text=True, timeout=timeout)


def test_run_status_restart_stop(tmp_path):
    path = app_settings(tmp_path)
    settings = read_settings(path)
    run = start_run(path, tmp_path)
    try:
        url = f"http://127.0.0.1:{settings.ports['wsgi']}/"
        assert f"open {url}" in run.log()
        client = Client(url)
        uid = client.queue.add(type="good")["uid"]

        out = shmooze("status", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        for name in ("queue", "volume", "wsgi"):
            assert any(line.startswith(name) and "RUNNING" in line for line in out.stdout.splitlines()), out.stdout
        assert f"queue/{uid}" in out.stdout and "good" in out.stdout

        report = json.loads(shmooze("status", "--json", "--settings", str(path)).stdout)
        queue = report["services"]["queue"]
        assert queue["state"] == "RUNNING" and queue["pid"] > 0
        module = queue["status"]["modules"][0]
        assert module["uid"] == uid and module["state"] == "running" and module["pid"] > 0

        second = shmooze("run", str(path), timeout=30)
        assert second.returncode == 1
        assert f"already running (pid {run.pid}" in second.stderr

        old_pid = queue["status"]["pid"]
        module_pid = module["pid"]
        out = shmooze("restart", "queue", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        assert client.queue.status()["pid"] != old_pid  # restart returns once the new service answers
        wait_for(lambda: gone(module_pid), 10, what="the module to stop with its service")
        stopped = f"module {uid} (good, pid {module_pid}) stopped: rm (service stopping)"
        wait_for(lambda: stopped in (tmp_path / "run" / "logs" / "queue.log").read_text(), 10,
                 what="the ladder's line in the queue's log")
        new = wait_for(lambda: (s := client.queue.status()) and not s["restoring"] and s, 20)
        assert new["pid"] != old_pid and [m["uid"] for m in new["modules"]] == [uid]  # restored (issue 12)
        assert new["modules"][0]["pid"] != module_pid

        pids = run.remember_descendants()
        out = shmooze("stop", "--settings", str(path))
        assert out.returncode == 0 and f"run pid {run.pid}" in out.stdout
        run.popen.wait(30)
        assert all(gone(p) for p in pids)
        assert not port_open(settings.ports["wsgi"])
        assert shmooze("status", "--settings", str(path)).returncode == 1
    finally:
        run.kill_everything()


def test_a_killed_run_never_blocks_the_next(tmp_path):
    path = app_settings(tmp_path)
    run = start_run(path, tmp_path)
    try:
        pids = run.remember_descendants()
        os.kill(run.pid, signal.SIGKILL)  # a crash: no clean-up code runs in the runner
        run.popen.wait(10)
        wait_for(lambda: all(gone(p) for p in pids), 30, what="supervisord and services to stop after the crash")
        again = start_run(path, tmp_path, "again")
        try:
            assert shmooze("stop", "--settings", str(path)).returncode == 0
            again.popen.wait(30)
        finally:
            again.kill_everything()
    finally:
        run.kill_everything()


def test_stale_lock_file_with_a_dead_pid_is_ignored(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir(mode=0o700)
    paths.lock.write_text("999999\n")  # left by a run that crashed long ago
    assert not is_locked(paths.lock)
    lock = InstanceLock(paths.lock)
    lock.acquire()
    try:
        assert is_locked(paths.lock)
        with pytest.raises(Exception, match=f"already running \\(pid {os.getpid()}"):
            InstanceLock(paths.lock).acquire()
    finally:
        lock.release()
    assert not is_locked(paths.lock)


def test_commands_without_a_run_say_so(tmp_path):
    path = app_settings(tmp_path)
    for cmd in ("status", "stop", "restart"):
        out = shmooze(cmd, "--settings", str(path))
        assert out.returncode == 1 and "not running" in out.stderr and "Traceback" not in out.stderr


def test_ctrl_c_stops_everything(tmp_path):
    path = app_settings(tmp_path)
    run = start_run(path, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{read_settings(path).ports['wsgi']}/")
        client.queue.add(type="good")
        pids = run.remember_descendants()
        assert len(pids) >= 5  # supervisord, three services and their workers, the module, the guard
        os.kill(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert run.popen.wait(30) == 0
        assert "stopping every service" in run.log()
        wait_for(lambda: all(gone(p) for p in pids), 10, what="every process of the run to end")
        assert not is_locked(RunPaths.for_settings(read_settings(path)).lock)
    finally:
        run.kill_everything()
