"""The user's path: the demo from a plain install, and a ``shmooze run`` that tells the truth.

The install tests build a fresh virtualenv with no extras from a copy of the checkout, exactly as
the README's demo command does (and, in a second test, from ``pip install .``), run the example
application on free ports and use it as a person would. Nothing of the test's own environment
(its venv, its PYTHONPATH) reaches them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from shmooze.deploy.runner import RunPaths, supervisord_conf
from shmooze.settings import read as read_settings
from tests.helpers import ROOT, Proc, free_port, gone, run_app, shmooze_argv, wait_for, wait_running, write_settings

BASE_PYTHON = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "run",
                                     ".pytest_cache", ".hypothesis", "var", "*_results.json")


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into the checkout, no test virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SHMOOZE_SETTINGS")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


def copy_checkout(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE)
    return dest


def demo_settings(checkout: Path, run_path: Path) -> Path:
    """The example's settings on free ports, beside the original (so its relative paths hold)."""
    data = json.loads((checkout / "examples" / "settings.json").read_text())
    data["ports"] = {name: free_port() for name in data["ports"]}
    data["run_path"] = str(run_path)
    path = checkout / "examples" / "settings-free-ports.json"
    path.write_text(json.dumps(data))
    return path


def use_demo(run: Proc, settings_path: Path) -> None:
    """Wait for the announcement, then use the app as a browser and a script would; SIGINT; all gone."""
    wait_for(lambda: "running; open" in run.log() or run.popen.poll() is not None, 300, interval=0.2,
             what="the 'running; open URL' line")
    assert run.popen.poll() is None, run.log()
    settings = read_settings(settings_path)
    url = f"http://127.0.0.1:{settings.ports['wsgi']}/"
    assert f"running; open {url}" in run.log()
    assert "spawned:" not in run.log()  # supervisord's own lines stay in its log file
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    script = requests.get(url + "static/shmooze.js", timeout=10)
    assert script.status_code == 200 and "Endpoint" in script.text
    public = requests.get(url + "settings.json", timeout=10).json()
    assert public["ports"]["wsgi"] == settings.ports["wsgi"] and "run_path" not in public
    answer = requests.post(url + "queue", json={"cmd": "modules_available"}, timeout=10).json()
    assert answer["success"] and "countdown" in answer["result"], answer
    added = requests.post(url + "queue", json={"cmd": "add", "args": {"type": "countdown", "args": {"seconds": 30}}},
                          timeout=10).json()
    assert added["success"], added
    module_pid = requests.post(url + "queue", json={"cmd": "status"}, timeout=10).json()["result"]["modules"][0]["pid"]
    pids = run.remember_descendants()
    assert module_pid in pids
    run.popen.send_signal(signal.SIGINT)
    assert run.popen.wait(60) == 0, run.log()
    wait_for(lambda: all(gone(p) for p in pids), 10, what="every service and module to end")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("fresh") / "shmooze")


def test_demo_command_on_a_plain_venv(checkout, tmp_path):
    """`python3 scripts/dev.py demo` in a copy of the checkout: a venv without extras, then the app.
    Its second run does not install again."""
    settings = demo_settings(checkout, tmp_path / "run")
    env = plain_env(SHMOOZE_VENV=str(tmp_path / "venv"))
    argv = [BASE_PYTHON, str(checkout / "scripts" / "dev.py"), "demo", str(settings)]
    first = Proc(argv, env=env, cwd=str(checkout), log_path=tmp_path / "first.log")
    try:
        use_demo(first, settings)
        assert "installing shmooze" in first.log()
        # pip's own progress while it installs (a line per package), then how long it took (issue 29).
        assert "Collecting gunicorn" in first.log() and "[dev] installed in " in first.log(), first.log()
    finally:
        first.kill_everything()
    # The test extras (pytest and friends) were never installed: the user's venv is the plain one.
    listed = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "list"],
                            capture_output=True, text=True, timeout=60).stdout.lower()
    assert "gunicorn" in listed and "pytest" not in listed
    second = Proc(argv, env=env, cwd=str(checkout), log_path=tmp_path / "second.log")
    try:
        use_demo(second, settings)
        assert "installing" not in second.log(), second.log()
    finally:
        second.kill_everything()


def test_pip_install_dot_runs_the_example(checkout, tmp_path):
    """`pip install .` (not editable) into a fresh venv, then `shmooze run` from somewhere else."""
    venv = pip_install(tmp_path, str(checkout))
    run_demo_from(venv, checkout, tmp_path)


def pip_install(tmp_path: Path, *what: str) -> Path:
    """A fresh virtualenv in ``tmp_path`` with ``pip install WHAT`` done in it, as a user's shell would."""
    venv = tmp_path / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, env=plain_env(), timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *what], check=True, env=plain_env(), timeout=900, cwd=str(tmp_path))
    return venv


def run_demo_from(venv: Path, checkout: Path, tmp_path: Path) -> None:
    """``shmooze run`` of that virtualenv on the example, used as a person would (see :func:`use_demo`)."""
    settings = demo_settings(checkout, tmp_path / "run")
    run = Proc([str(venv / "bin" / "shmooze"), "run", str(settings)], env=plain_env(), cwd=str(tmp_path),
               log_path=tmp_path / "run.log")
    try:
        use_demo(run, settings)
    finally:
        run.kill_everything()


def lowest_versions() -> list[str]:
    """``name==X`` for each dependency that ``pyproject.toml`` declares as ``name>=X``."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    block = text[text.index("dependencies = ["):]
    block = block[:block.index("]\n")]
    pins = [f"{name}=={version}" for name, version in re.findall(r'"([A-Za-z0-9_.\-\[\]]+)>=([0-9][^",;\s]*)"', block)]
    assert len(pins) >= 7, pins  # every runtime dependency has a floor
    return pins


def test_the_lowest_declared_versions_run_the_example(checkout, tmp_path):
    """Every runtime dependency at the lowest version ``pyproject.toml`` accepts (a user whose
    environment already has those), then the example as a person uses it: the gateway's fast lane
    and the services' loop worker lean on gunicorn's internals, so a floor set too low fails here."""
    pins = lowest_versions()
    venv = pip_install(tmp_path, *pins, str(checkout))
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    from packaging.version import Version

    have = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed)}
    for pin in pins:
        name, version = pin.split("==")
        assert Version(have[name.split("[")[0].lower().replace("_", "-")]) == Version(version), (pin, have)
    run_demo_from(venv, checkout, tmp_path)
    for name in ("wsgi", "queue"):
        log = (tmp_path / "run" / "logs" / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


# -- shmooze run tells the truth ---------------------------------------------------------------

def app(tmp_path: Path, name: str = "settings.json", **extra) -> Path:
    ports = {"wsgi": free_port(), "queue": free_port()}
    data = {"ports": ports, "run_path": str(tmp_path / "run"), "services": {"queue": "tests.apps:make_queue"},
            "stop_timeout": 5, **extra}
    return write_settings(tmp_path / name, **data)


def ends_within(run: Proc, seconds: float) -> int:
    started = time.monotonic()
    code = run.popen.wait(seconds)
    assert time.monotonic() - started <= seconds
    return code


def test_a_taken_port_names_the_service_and_the_holder(tmp_path):
    path = app(tmp_path)
    port = read_settings(path).ports["wsgi"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        run = run_app(path, tmp_path)
        try:
            assert ends_within(run, 10) == 1
        finally:
            run.kill_everything()
    out = run.log()
    assert f"port {port} of service 'wsgi' is taken" in out and f"pid {os.getpid()}" in out, out
    assert "nothing was started" in out and "running" not in out
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_a_copied_settings_file_is_refused_while_the_first_runs(tmp_path):
    path = app(tmp_path)
    first = run_app(path, tmp_path)
    try:
        wait_running(first)
        copy = tmp_path / "copy"
        copy.mkdir()
        data = json.loads(path.read_text())
        data["run_path"] = str(copy / "run")
        copied = write_settings(copy / "settings.json", **data)
        second = run_app(copied, copy, "second")
        try:
            assert ends_within(second, 10) == 1
        finally:
            second.kill_everything()
        assert "is taken" in second.log() and "shmooze" in second.log() and "running;" not in second.log()
        # The first copy is untouched by the attempt.
        assert requests.get(f"http://127.0.0.1:{data['ports']['wsgi']}/settings.json", timeout=5).status_code == 200
        first.stop(signal.SIGINT, 30)
    finally:
        first.kill_everything()


@pytest.mark.parametrize("factory,start_timeout,headline", [
    ("tests.apps:make_failing", 30, "failed to start"),  # told at once, long before the start timeout
    ("tests.apps:make_hanging", 3, "did not answer within its start timeout"),
])
def test_a_service_that_does_not_come_up_fails_the_run(tmp_path, factory, start_timeout, headline):
    path = app(tmp_path, services={"queue": factory}, start_timeout=start_timeout, stop_timeout=2)
    run = run_app(path, tmp_path)
    try:
        wait_for(lambda: "starting" in run.log(), 10, what="the start line")
        assert str(tmp_path / "run" / "logs") in run.log()  # where the logs are, said before anything else
        pids = run.remember_descendants()
        assert ends_within(run, 15) == 1
        wait_for(lambda: all(gone(p) for p in pids + run.remember_descendants()), 10, what="the other services")
    finally:
        run.kill_everything()
    out = run.log()
    assert f"service 'queue' {headline}" in out and "running;" not in out, out
    assert str(tmp_path / "run" / "logs" / "queue.log") in out
    if factory.endswith("failing"):
        assert "broken on purpose" in out  # the log's last lines are shown


def test_settings_path_with_a_space_and_a_percent(tmp_path):
    folder = tmp_path / "my app %d 100%"
    folder.mkdir()
    path = app(folder, run_path=str(tmp_path / "run %s"))
    conf = supervisord_conf(read_settings(path), RunPaths.for_settings(read_settings(path)))
    assert "%%d 100%%" in conf
    run = run_app(path, tmp_path)
    try:
        wait_running(run)
        status = subprocess.run(shmooze_argv("status", "--settings", str(path)), capture_output=True, text=True,
                                timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        run.stop(signal.SIGINT, 30)
    finally:
        run.kill_everything()


def test_status_exits_non_zero_when_a_service_does_not_answer_and_logs_show_output(tmp_path):
    path = app(tmp_path)
    run = run_app(path, tmp_path)
    try:
        wait_running(run)
        argv = shmooze_argv("status", "--settings", str(path))
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
        queue_pid = json.loads(subprocess.run(argv + ["--json"], capture_output=True, text=True,
                                              timeout=30).stdout)["services"]["queue"]["status"]["pid"]
        os.kill(queue_pid, signal.SIGSTOP)  # running as far as supervisord knows, but answering nothing
        try:
            frozen = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        finally:
            os.kill(queue_pid, signal.SIGCONT)
        assert frozen.returncode == 1 and "NOT ANSWERING" in frozen.stdout, frozen.stdout

        logs = subprocess.run(shmooze_argv("logs", "queue", "--settings", str(path)), capture_output=True,
                              text=True, timeout=30)
        assert logs.returncode == 0 and "Listening at" in logs.stdout, logs.stdout
        follow = Proc(shmooze_argv("logs", "-f", "--settings", str(path)), log_path=tmp_path / "follow.log")
        try:
            wait_for(lambda: "wsgi | " in follow.log(), 10, what="the tails of every log")
            url = f"http://127.0.0.1:{read_settings(path).ports['wsgi']}/"
            uid = requests.post(url + "queue", json={"cmd": "add", "args": {"type": "good"}}, timeout=10).json()
            requests.post(url + "queue", json={"cmd": "rm", "args": {"uids": [uid["result"]["uid"]]}}, timeout=10)
            wait_for(lambda: "queue | " in follow.log() and f"module {uid['result']['uid']} (good" in follow.log(),
                     10, what="the ladder's line in the queue's log, followed")
        finally:
            follow.stop(signal.SIGINT, 10)
        run.stop(signal.SIGINT, 30)
    finally:
        run.kill_everything()


def test_ctrl_c_twice_stops_at_once(tmp_path):
    path = app(tmp_path, services={"queue": "tests.apps:make_stuck_queue"}, stop_timeout=60)
    run = run_app(path, tmp_path)
    try:
        wait_running(run)
        url = f"http://127.0.0.1:{read_settings(path).ports['wsgi']}/"
        added = requests.post(url + "queue", json={"cmd": "add", "args": {"type": "stuck"}}, timeout=10).json()
        assert added["success"], added
        pids = run.remember_descendants()
        run.popen.send_signal(signal.SIGINT)
        wait_for(lambda: "Ctrl-C again" in run.log(), 10, what="the first stop line")
        with pytest.raises(subprocess.TimeoutExpired):  # the stuck module holds the graceful stop
            run.popen.wait(1)
        run.popen.send_signal(signal.SIGINT)
        assert ends_within(run, 5) == 0
        wait_for(lambda: all(gone(p) for p in pids), 5, what="every service and the stuck module")
        assert "stopping at once" in run.log()
    finally:
        run.kill_everything()
