"""A full disk is a state the app reports and recovers from on its own (issue 22, item 2).

Each test mounts a small tmpfs of its own (as root; skipped otherwise), puts the journal, the
command log (and, live, the run folder) on it, fills it with one file, and frees it by deleting
that file. In process: the journal and the command log keep what they could not write and write it
once space returns, with one log line as the failures begin and one as they end, nothing lost. Live
(``shmooze run``): ``status`` has a ``problem``, ``shmooze status`` exits 1 and says it, the metrics
gauge is 1, state-changing commands are refused with a clear error while reads work, a worker
killed meanwhile comes back answering (it does not end FATAL), and once space returns everything
is written, the problem clears and commands work again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from shmooze.cli.statustable import format_status
from shmooze.client import Client, ServiceError
from shmooze.deploy import runner
from shmooze.hosting import journal
from shmooze.hosting.cmdlog import CommandLog
from shmooze.hosting.journal import Journal
from shmooze.system import storage
from tests.helpers import free_port, report_line, shmooze_argv, start_run, wait_for, write_settings

pytestmark = pytest.mark.timeout(240)

#: How long a store may take to notice that space is back: its longest retry delay and some.
RECOVERY = storage.LAST_RETRY + 6


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test, unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command")
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        for _ in range(50):  # busy until every process that had a file open there is gone
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            wait_for(lambda: True, 0.1)
        else:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to its last byte with one file; deleting it frees the space."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def lines_matching(records: list[logging.LogRecord], pattern: str) -> list[str]:
    return [r.getMessage() for r in records if re.search(pattern, r.getMessage())]


# -- in process ----------------------------------------------------------------------------

def test_journal_and_command_log_keep_what_a_full_disk_refused(small_disk, caplog):
    caplog.set_level(logging.INFO)
    health = storage.Health()
    path = str(small_disk / "queue.journal")
    jour = Journal(path, "queue", health=health)
    clog = CommandLog(str(small_disk / "log.db"), "queue", health=health)
    try:
        jour.added("u0", "good", {})
        clog.record("client-queue", "u0", {"cmd": "add"}, {"uid": "u0"})
        assert jour.flush() and clog.flush()
        assert health.problem() is None and health.refusal is None
        filler = fill(small_disk)
        n = 300
        for i in range(1, n):  # more than the last pages' slack of either file
            jour.added(f"u{i}", "good", {"pad": "x" * 200})
            clog.record("client-queue", f"u{i}", {"cmd": "add", "pad": "y" * 200}, {"uid": f"u{i}"})
        assert not jour.flush()  # not written: flush says so
        assert not clog.flush()
        failing = {s["store"]: s for s in health.status()["failing"]}
        assert set(failing) == {"journal", "command log"}, failing
        assert all(s["full"] and s["lost"] == 0 for s in failing.values()), failing
        assert failing["command log"]["pending"] == n - 1
        assert jour.status()["unwritten"] > 0
        problem = health.problem()
        assert problem and "disk full" in problem and "kept in memory" in problem, problem
        assert health.refusal and "could not be kept" in health.refusal
        gauges = {(name, labels["store"]): value for name, _, _, labels, value in health.gauges()}
        assert gauges[("shmooze_storage_failing", "journal")] == 1.0
        assert gauges[("shmooze_storage_full", "command log")] == 1.0
        assert gauges[("shmooze_storage_lost", "journal")] == 0.0
        # A few retries happen meanwhile (backoff): still one line per store.
        wait_for(lambda: health.status()["failing"][0]["failures"] >= 3, 10, interval=0.05)

        filler.unlink()
        wait_for(lambda: health.problem() is None, RECOVERY, interval=0.05, what="both stores written again")
        assert jour.flush() and clog.flush()
        entries, damage = journal.read(path)
        assert damage is None and [e["uid"] for e in entries] == [f"u{i}" for i in range(n)]
        assert clog.count() == n
        assert health.refusal is None and health.status()["lost"] == {}
    finally:
        jour.close()
        clog.close()
    began = lines_matching(caplog.records, "cannot be written")
    ended = lines_matching(caplog.records, "is written again")
    assert len(began) == 2 and len(ended) == 2, began + ended  # one each per store, not one per write
    assert not lines_matching(caplog.records, r"are lost|\(s\) lost"), caplog.text
    assert all("nothing was lost" in line for line in ended), ended


def test_stores_open_on_a_full_disk_and_catch_up(small_disk, caplog):
    """A service that starts while the disk is full: its journal and command log open anyway."""
    caplog.set_level(logging.INFO)
    path = str(small_disk / "queue.journal")
    before = Journal(path, "queue")
    before.added("kept", "good", {"n": 1})
    before.close()
    filler = fill(small_disk)
    health = storage.Health()
    jour = Journal(path, "queue", health=health)  # rewriting the file fails: it opens all the same
    clog = CommandLog(str(small_disk / "new-log.db"), "queue", health=health)  # its schema cannot be written
    try:
        assert [e["uid"] for e in jour.recovered] == ["kept"]
        assert {s["store"] for s in health.status()["failing"]} == {"journal", "command log"}
        jour.added("later", "good", {})
        clog.record("client-queue", "later", {"cmd": "add"}, {"uid": "later"})
        assert not jour.flush() and not clog.flush()
        filler.unlink()
        wait_for(lambda: health.problem() is None, RECOVERY, interval=0.05, what="both stores written again")
        assert [e["uid"] for e in journal.read(path)[0]] == ["kept", "later"]
        assert clog.count() == 1
        assert not [p for p in os.listdir(small_disk) if ".tmp-" in p]  # failed attempts left nothing
    finally:
        jour.close()
        clog.close()
    assert len(lines_matching(caplog.records, "cannot be written")) == 2
    assert len(lines_matching(caplog.records, "is written again")) == 2


def test_a_change_the_full_disk_did_not_take_is_answered_not_kept_then_refused(small_disk):
    """A queue in process: the write that fails makes its command's answer an error (the change is
    applied, so it says "done but not kept"), later changes are refused before they run, reads go on;
    once space returns the change is written and commands work again."""
    from shmooze.protocol import Command
    from shmooze.queue import Queue
    from tests.apps import TYPES

    path = small_disk / "queue.journal"
    q = Queue(TYPES, journal=str(path))
    q.start()
    try:
        wait_for(lambda: not q.restoring, 30, what="the restore to end")
        first = q.dispatch(Command("add", {"type": "good"}))
        assert first["success"], first
        filler = fill(small_disk)
        # A record larger than the zeroed space the journal keeps ahead of its writes: its write fails.
        answer = q.dispatch(Command("add", {"type": "good", "args": {"pad": "x" * (journal.RESERVE + 8192)}}))
        assert not answer["success"] and "not kept" in answer["error"] and "disk full" in answer["error"], answer
        refused = q.dispatch(Command("rm", {"uids": [first["result"]["uid"]]}))
        assert not refused["success"] and "refused: the change could not be kept" in refused["error"], refused
        listed = q.dispatch(Command("queue", {}))
        assert listed["success"] and len(listed["result"]) == 2  # reads go on (the add was done)
        status = q.dispatch(Command("status", {}))["result"]
        assert "journal" in status["problem"] and status["storage"]["failing"][0]["pending"] >= 1
        filler.unlink()
        wait_for(lambda: q.storage.problem() is None, RECOVERY, interval=0.05, what="the journal written again")
        assert len(journal.read(str(path))[0]) == 2  # the change that was not kept then is kept now
        again = q.dispatch(Command("rm", {"uids": [first["result"]["uid"]]}))
        assert again["success"], again
        assert len(journal.read(str(path))[0]) == 1
    finally:
        q.stop()


def test_health_says_it_once_per_outage_and_names_quota_and_sqlite_full(caplog):
    caplog.set_level(logging.INFO)
    changes: list = []
    health = storage.Health(on_change=changes.append)
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert storage.is_full(quota) and storage.is_full(sqlite3.OperationalError("database or disk is full"))
    assert not storage.is_full(OSError(errno.EACCES, "Permission denied"))
    delays = [health.failed("journal", "/j", quota, pending=i + 1) for i in range(8)]
    assert delays == sorted(delays) and delays[0] == storage.FIRST_RETRY and delays[-1] == storage.LAST_RETRY
    assert health.refusal and "Disk quota exceeded" in health.refusal
    health.failed("command log", "/l", OSError(errno.EIO, "Input/output error"), pending=3, lost=2)
    problem = health.problem()
    assert "disk full (Disk quota exceeded)" in problem and "8 change(s) kept" in problem, problem
    assert "Input/output error" in problem and "2 lost" in problem, problem  # not a full disk: said as it is
    health.written("journal", 8)
    health.written("journal", 1)  # (no outage: nothing said)
    assert "journal" not in (health.problem() or "") and health.refusal is not None  # the log still fails
    health.written("command log", 3)
    assert health.problem() is None and health.refusal is None
    assert health.status() == {"failing": [], "lost": {"command log": 2}, "outages": {"journal": 1, "command log": 1}}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 4, said  # two outages: a line as each began, one as each ended
    assert [p is None for p in changes] == [False, False, False, True]  # a change event each time


def test_shmooze_run_on_a_full_disk_says_so_in_one_line(small_disk, tmp_path):
    fill(small_disk)
    path = write_settings(tmp_path / "settings.json", ports={"wsgi": free_port(), "queue": free_port()},
                          services={"queue": "tests.apps:make_queue"}, run_path=str(small_disk / "run"))
    out = shmooze("run", str(path))
    assert out.returncode == 1 and "No space left on device" in out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_status_table_and_exit_status_show_a_problem():
    problem = "journal /x/queue.journal cannot be written (disk full (No space left on device)) since 12:00:00"
    report = {"services": {
        "queue": {"state": "RUNNING", "pid": 30, "uptime": 5, "answering": True, "status": {"problem": problem}},
        "pool": {"state": "RUNNING", "pid": 31, "uptime": 5, "answering": True, "status": {"problem": None}},
    }}
    text = format_status(report)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:3]}
    assert rows["queue"][:2] == ["RUNNING", "(PROBLEM)"] and rows["pool"][0:3] == ["RUNNING", "-", "31"], text
    assert f"queue: PROBLEM: {problem}" in text.splitlines() and "pool: PROBLEM" not in text
    assert not runner.all_up(report)  # shmooze status exits 1
    report["services"]["queue"]["status"]["problem"] = None
    assert runner.all_up(report) and "PROBLEM" not in format_status(report)


# -- live ----------------------------------------------------------------------------------

def shmooze(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(shmooze_argv(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("logs_there", [False, True], ids=["logs-elsewhere", "logs-on-the-full-disk"])
def test_a_full_disk_is_reported_survived_and_recovered_from(small_disk, tmp_path, logs_there, request):
    """``logs-elsewhere``: the run's logs folder is a folder off the small disk mounted there (bound: a link
    would be refused, another user could plant one), so that the test reads every line the services wrote;
    ``logs-on-the-full-disk``: all of the run folder is there (supervisord cannot write the logs meanwhile)."""
    ports = {"wsgi": free_port(), "queue": free_port()}
    run_folder = small_disk / "run"
    run_folder.mkdir(mode=0o700)  # (a run folder must be the user's alone)
    logs = run_folder / "logs"
    if not logs_there:
        (tmp_path / "logs").mkdir(mode=0o700)
        logs.mkdir(mode=0o700)
        subprocess.run(["mount", "--bind", str(tmp_path / "logs"), str(logs)], check=True)
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(logs)], check=False))
    path = write_settings(tmp_path / "settings.json", ports=ports, run_path=str(run_folder),
                          services={"queue": "tests.apps:make_queue"}, journal_path=str(small_disk / "state"),
                          log_database_path=str(small_disk / "log.db"), stop_timeout=5)
    client = Client(f"http://127.0.0.1:{ports['wsgi']}/", timeout=20)
    run = start_run(path, tmp_path)
    filler = None
    try:
        uids = [client.queue.add(type="good")["uid"] for _ in range(3)]
        wait_for(lambda: client.queue.status()["journal"]["pending"] == 0, 10, what="the journal written")
        status = client.queue.status()
        assert status["problem"] is None
        out = shmooze("status", "--settings", str(path))
        assert out.returncode == 0 and "PROBLEM" not in out.stdout, out.stdout + out.stderr

        filler = fill(small_disk)
        # Commands go on until the zeroed space of the journal (which keeps the command log's rows too) or the
        # command log's last page is used up; then they are refused.
        refusals = []
        for i in range(2000):
            try:
                client.queue.mv(uids=uids[i % 3:] + uids[:i % 3])
            except ServiceError as exc:
                refusals.append(str(exc))
                break
        # Refused before it ran, or (the journal's write failed under it) done but said not kept.
        assert refusals and re.search(r"not (be )?kept", refusals[0]) and "disk full" in refusals[0], refusals
        status = client.queue.status()
        assert status["problem"] and "disk full" in status["problem"], status["problem"]
        assert [m["uid"] for m in client.queue.queue()]  # reads still work
        out = shmooze("status", "--settings", str(path))
        assert out.returncode == 1, out.stdout + out.stderr
        assert "queue: PROBLEM:" in out.stdout and "disk full" in out.stdout, out.stdout
        metrics = requests.get(client.url + "metrics", timeout=10).text
        assert re.search(r'shmooze_storage_failing\{service="queue",store="[a-z ]+"\} 1\.0', metrics), metrics
        with pytest.raises(ServiceError, match="could not be kept"):
            client.queue.add(type="good")

        # The worker killed while the disk is full comes back, answering with the problem.
        old_pid = status["pid"]
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()

        def back_with_problem():
            with contextlib.suppress(Exception):
                st = client.queue.status()
                return st["pid"] != old_pid and not st["restoring"] and st["problem"] and st
            return None
        status = wait_for(back_with_problem, 60, interval=0.1, what="a new worker answering on the full disk")
        back = time.monotonic() - killed
        # Restored from what was written (a status that says the restore is over lists them all).
        assert {m["uid"] for m in status["modules"]} == set(uids), (status["restoring"], status["journal"])
        assert "journal" in status["problem"], status["problem"]  # it could not rewrite its journal at start
        out = shmooze("status", "--settings", str(path), "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "FATAL" not in out.stdout and '"RUNNING"' in out.stdout, out.stdout

        filler.unlink()
        filler = None
        freed = time.monotonic()

        def recovered():
            with contextlib.suppress(Exception):
                st = client.queue.status()
                return st["problem"] is None and st["journal"]["unwritten"] == 0 and st
            return None
        status = wait_for(recovered, RECOVERY, interval=0.1, what="the problem cleared once space returned")
        report_line(request, f"disk full ({request.node.callspec.id}): {i} command(s) accepted after the fill, "
                             f"then refused; back answering after SIGKILL in {back:.2f} s; recovered "
                             f"{time.monotonic() - freed:.2f} s after space returned")
        assert status["pid"] == client.queue.status()["pid"]  # the same worker: nothing was restarted
        out = shmooze("status", "--settings", str(path))
        assert out.returncode == 0 and "PROBLEM" not in out.stdout, out.stdout + out.stderr
        metrics = requests.get(client.url + "metrics", timeout=10).text
        assert re.search(r'shmooze_storage_failing\{service="queue",store="journal"\} 0\.0', metrics), metrics
        assert re.search(r'shmooze_storage_failing\{service="queue",store="command log"\} 0\.0', metrics), metrics
        new = client.queue.add(type="good")["uid"]  # commands work again, and are kept
        wait_for(lambda: client.queue.status()["journal"]["pending"] == 0, 10, what="the journal written")
        kept = journal.read(str(small_disk / "state" / "queue.journal"))[0]
        assert {e["uid"] for e in kept} == {*uids, new}
        text = (logs / "queue.log").read_text(errors="replace")
        began = re.findall(r"(?:journal|command log) \S+ cannot be written", text)
        ended = re.findall(r"(?:journal|command log) \S+ is written again", text)
        # One line per store as each outage began and one as it ended (the first worker's ended with it).
        assert len(began) <= 4 and 1 <= len(ended) <= 2, text[-4000:]
        assert any(line.startswith("journal") for line in ended), ended
        if not logs_there:
            assert len(began) >= 2, text[-4000:]  # (on the full disk, supervisord could not write them)
        assert "change(s) lost" not in text and "row(s) lost" not in text, text[-4000:]
        gateway = (logs / "wsgi.log").read_text(errors="replace")
        assert "SIGBUS" not in gateway and "was sent" not in gateway, gateway[-4000:]  # its workers lived through it

        out = shmooze("stop", "--settings", str(path))
        assert out.returncode == 0, out.stderr
        run.popen.wait(30)
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        run.kill_everything()
