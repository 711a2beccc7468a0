"""The test kit (shmooze.testing): a process is stopped by its pid, and what it leaves behind fails the
stop and is ended; a port is waited for with a deadline; a connection is found on its worker."""

from __future__ import annotations

import http.client
import signal
import subprocess
from pathlib import Path

import pytest

from shmooze.polling import wait_until
from shmooze.testing import PYTHON, Process, free_port, gone, on_every_worker, port_open

LEAVES_A_CHILD = ("import subprocess, sys, time\n"
                  "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
                  "print(child.pid, flush=True)\n"
                  "time.sleep(60)\n")


def test_a_process_that_leaves_a_child_behind_fails_its_stop_and_the_child_is_ended(tmp_path):
    proc = Process([PYTHON, "-c", LEAVES_A_CHILD], log_path=tmp_path / "parent.log", name="parent")
    child = int(wait_for_line(proc))
    with pytest.raises(AssertionError, match=r"parent left processes behind: \['pid \d+ \(sleep 60\)'\]"):
        proc.stop(timeout=10)
    assert gone(proc.pid) and gone(child)


def test_a_process_deaf_to_sigterm_fails_its_stop_and_is_killed(tmp_path):
    deaf = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    proc = Process([PYTHON, "-c", deaf], log_path=tmp_path / "deaf.log", name="deaf")
    assert wait_for_line(proc) == "ready"
    with pytest.raises(AssertionError, match="deaf did not stop within 0.5 s after signal 15"):
        proc.stop(signal.SIGTERM, timeout=0.5)
    assert proc.popen.returncode == -signal.SIGKILL and gone(proc.pid)


def test_a_python_process_stops_on_ctrl_c(tmp_path):
    proc = Process([PYTHON, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"], log_path=tmp_path / "sleeper.log",
                   name="sleeper")
    assert wait_for_line(proc) == "ready"
    assert proc.stop(signal.SIGINT, timeout=10) == -signal.SIGINT  # (KeyboardInterrupt, uncaught)


def test_ctrl_c_reaches_what_a_suite_started_in_the_background_starts():
    """A shell's `cmd &` (and nohup) starts the suite with SIGINT and SIGQUIT ignored, which every
    process it starts would inherit: `shmooze logs -f` and `shmz watch` then never heard the Ctrl-C of
    the tests that stop them (their /proc status said SigIgn 0x1001007). tests/conftest.py puts them
    back; here the test above runs in a suite started that way."""
    root = Path(__file__).resolve().parent.parent
    test = f"{Path(__file__).relative_to(root)}::test_a_python_process_stops_on_ctrl_c"
    run = subprocess.run(["bash", "-c", 'trap "" INT QUIT; exec "$@"', "bash", PYTHON, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", test], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


def test_a_process_that_stops_cleanly_gives_its_status():
    proc = Process([PYTHON, "-c", "import time; time.sleep(60)"])
    assert proc.stop() == -signal.SIGTERM


def test_waiting_for_a_port_fails_at_once_when_the_process_exits(tmp_path):
    proc = Process([PYTHON, "-c", "import sys; print('no server here'); sys.exit(3)"], log_path=tmp_path / "x.log",
                   name="quitter")
    with pytest.raises(AssertionError, match="quitter exited with 3:\nno server here"):
        proc.wait_port(free_port(), timeout=30)


def test_a_connection_is_found_on_the_process_that_accepted_it(tmp_path):
    port = free_port()
    server = Process([PYTHON, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=str(tmp_path))
    try:
        server.wait_port(port)

        def connect() -> http.client.HTTPConnection:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.connect()
            return conn

        conns = on_every_worker({server.pid}, connect)
        assert len(conns) == 1  # the one process holds the first connection
        for conn in conns:
            conn.close()
    finally:
        server.stop()
    assert not port_open(port)


def wait_for_line(proc: Process) -> str:
    """The first line the process printed (its log), waiting with a deadline."""
    return wait_until(lambda: proc.log().partition("\n")[1] and proc.log().partition("\n")[0], 20,
                      f"{proc.name} to print", error=AssertionError)
