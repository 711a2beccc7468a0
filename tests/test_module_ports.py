"""A module's two ports under attack by local processes (issue 21, items 5 and 6).

The attacker (tests/port_attacker.py) reads each starting module's ports from its command line, as
``ps`` shows them, and connects first: as another user (uid 65534, through ``setpriv``) it writes a
line and resets the connection, or floods the ports with connections; as the same user it connects
and waits. The modules sleep 0.3 s before connecting, as a slow-starting module would, so the
attacker is always there first. Every start must still succeed with the real module, nothing the
attacker wrote may reach the service, and the log says so once per start, not once per connection.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmooze import protocol
from shmooze.moduletype import ModuleType
from shmooze.queue import Queue
from shmooze.system import cgroup, peer
from tests.helpers import wait_for
from tests.test_faults import ok

HERE = Path(__file__).resolve().parent
ATTACKER = str(HERE / "port_attacker.py")
SHOUT = str(HERE.parent / "examples" / "modules" / "shout.sh")
STARTS = 50
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CGROUPS = cgroup.usable_parent()[0] is not None


def other_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the attacker as another user (setpriv --reuid=65534)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")


def slow_module(needle: str, script: str = 'sleep 0.3; exec bash "$0" "$@"') -> ModuleType:
    """shout.sh behind a bash that first runs ``script`` (its last three arguments stay the ports)."""
    return ModuleType("target", ("bash", "-c", script, SHOUT, needle))  # connect_timeout: the default 2 s


class Attacker:
    """tests/port_attacker.py in MODE against the modules carrying ``needle``, stopped by pid."""

    def __init__(self, mode: str, needle: str, as_nobody: bool = True):
        python = "/usr/bin/python3" if as_nobody and os.path.exists("/usr/bin/python3") else sys.executable
        argv = [python, ATTACKER, mode, needle, "120"]
        self.proc = subprocess.Popen((AS_NOBODY if as_nobody else []) + argv, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "watching"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate(timeout=10)[0]


def starts(q: Queue, n: int) -> list[str]:
    """Start, use and remove the module ``n`` times; the errors of the starts that failed."""
    failed = []
    for _ in range(n):
        answer = q.dispatch(protocol.Command("add", {"type": "target", "args": {}}))
        if not answer["success"]:
            failed.append(answer["error"])
            continue
        uid = answer["result"]["uid"]
        assert ok(q, "tell_module", uid=uid, cmd="shout", args={"text": "mine"}) == "MINE"
        ok(q, "rm", uids=[uid])
    return failed


@pytest.fixture
def queue():
    made: list[Queue] = []

    def make(*types: ModuleType, **options) -> Queue:
        made.append(Queue(list(types), keep_ended=STARTS * 2, **options))
        made[-1].start()
        return made[-1]

    yield make
    for q in made:
        q.stop()


def warnings_of(caplog) -> list[str]:
    """The service's warning (and worse) lines."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("shmooze") and r.levelno >= logging.WARNING]


def attacked(queue, tmp_path, mode: str, n: int, as_nobody: bool = True) -> tuple[Queue, list[str], str]:
    """``n`` starts of a slow module while the attacker runs in ``mode``: the queue, the errors of
    the starts that failed, and the attacker's report."""
    if as_nobody:
        other_user()
    needle = str(tmp_path / "target")
    q = queue(slow_module(needle))
    attacker = Attacker(mode, needle, as_nobody)
    t0 = time.monotonic()
    try:
        failed = starts(q, n)
    finally:
        report = attacker.stop().strip()
    refused = ok(q, "status")["refused_connections"]
    print(f"{mode}: {len(failed)} of {n} starts failed, {refused} connections refused in "
          f"{time.monotonic() - t0:.1f} s; attacker: {report}")
    return q, failed, report


def test_connect_write_and_reset_never_reaches_the_service(queue, tmp_path, caplog):
    """Another user connects, writes a line and resets, again and again, during 50 starts: no start
    fails, nothing written reaches the service (no ``hijacked`` parameter, no forged answer)."""
    caplog.set_level(logging.WARNING, logger="shmooze")
    q, failed, report = attacked(queue, tmp_path, "rst", STARTS)
    events = json.dumps(ok(q, "changes", since=0))
    print(f"{events.count('hijacked')} hijacked parameters, {len(warnings_of(caplog))} warning lines")
    assert not failed, failed[:3]
    assert "hijacked" not in events
    assert ok(q, "status")["refused_connections"] > 0, f"no attack got in: the test proves nothing ({report})"
    assert len(warnings_of(caplog)) <= STARTS


def test_a_flood_of_connections_fails_no_start(queue, tmp_path, caplog):
    """Another user floods each starting module's ports with connections: every start succeeds, and
    the log gets at most one line per start about it."""
    caplog.set_level(logging.WARNING, logger="shmooze")
    q, failed, report = attacked(queue, tmp_path, "flood", STARTS)
    warnings = warnings_of(caplog)
    print(f"{len(warnings)} warning lines")
    assert not failed, failed[:3]
    assert ok(q, "status")["refused_connections"] > STARTS * 20, f"too thin a flood to prove anything ({report})"
    assert len(warnings) <= 2 * STARTS, warnings[:5]


def test_a_process_of_the_same_user_is_refused(queue, tmp_path):
    """A process of the service's own user that is not the module connects first and waits: it is
    closed without a word (it never reads ``init``), and the module still starts."""
    q, failed, report = attacked(queue, tmp_path, "hold", 10, as_nobody=False)
    assert not failed, failed[:3]
    assert "HIJACKED" not in report and " hijacked 0" in report, report
    assert ok(q, "status")["refused_connections"] > 0, f"the stranger never got in first: proves nothing ({report})"


@pytest.mark.parametrize("containment", ["process-group", "cgroup"])
def test_a_module_connecting_from_a_fresh_child_is_never_refused(queue, tmp_path, containment):
    """The connecting process is a child the module forked just before (a shell running shout.sh in
    the background): its sockets are found among the module's processes at every start."""
    if containment == "cgroup" and not CGROUPS:
        pytest.skip("no cgroup v2 with cgroup.kill that this user may write")
    q = queue(slow_module(str(tmp_path / "target"), 'bash "$0" "$@" & wait'), containment=containment)
    failed = starts(q, STARTS)
    assert not failed, failed[:3]
    assert ok(q, "status")["refused_connections"] == 0


# -- the check itself, on real loopback connections ----------------------------------------------


def peer_gone(conn: socket.socket) -> bool:
    try:
        conn.getpeername()
        return False
    except OSError:
        return True


def test_a_peer_reset_before_the_check_is_refused():
    """Reset right after writing: the kernel no longer knows the other end, and the check refuses
    it, even with this very process (which held it) named as the module."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        client.sendall(b'{"cmd": "set_parameters", "args": {"parameters": {"hijacked": 1}}}\n')
        conn, _ = listener.accept()
        with conn:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            wait_for(lambda: peer_gone(conn), 5, what="the reset to arrive")
            verdict = peer.check(conn, [os.getpid()])
            assert not verdict and verdict.kind == "peer gone before it was identified", verdict.why


def test_a_peer_closed_before_the_check_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        with conn:
            client.close()  # a FIN: the other end is orphaned (no owner, inode 0), then gone
            verdict = peer.check(conn, [os.getpid()])
            assert not verdict and verdict.kind == "peer gone before it was identified", verdict.why


def test_a_live_peer_is_found_among_the_pids_given():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client:
        conn, _ = listener.accept()
        with conn:
            assert peer.check(conn, [os.getpid()]), "this process holds the other end"
            verdict = peer.check(conn, lambda: [1])
            assert not verdict and verdict.kind == f"uid {os.getuid()}, not the module's processes", verdict.why
        client.close()


def test_another_user_is_refused_without_looking_for_the_module():
    """The kernel's answer (the uid) is enough: the module's processes are not even listed."""
    other_user()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        child = subprocess.Popen(AS_NOBODY + ["/usr/bin/python3", "-c", "import socket, sys; s = socket.create_"
                                              f"connection(('127.0.0.1', {port})); sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
        try:
            conn, _ = listener.accept()
            with conn:
                def pids() -> list[int]:
                    raise AssertionError("the module's processes were listed for another user's connection")

                verdict = peer.check(conn, pids)
                assert not verdict and verdict.kind == "uid 65534", verdict.why
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
