"""Faults: a service worker killed under load, gateway workers replaced, module streams cut from
outside, and the file-descriptor (and process) limit reached during ``add``.

Every wait is bounded (tests.helpers.wait_for); clients always have a timeout, and every
failure a client sees must be a ShmoozeError subclass that arrives within that timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import psutil
import pytest

from shmooze import protocol
from shmooze.client import Client, ServiceClient
from shmooze.errors import ShmoozeError
from shmooze.moduletype import ModuleType
from shmooze.queue import Queue
from shmooze.system import ladder
from tests.helpers import PYTHON, ROOT, Proc, Stack, free_port, gone, port_open, wait_for, write_settings

MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")
CLIENT_TIMEOUT = 2.0


class ClientLoop:
    """Calls ``status`` in a loop on its own thread; records every outcome and its duration."""

    def __init__(self, call):
        self.call = call
        self.ok: list[int] = []  # pids that answered
        self.errors: list[BaseException] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.ok.append(self.call()["pid"])
            except BaseException as exc:  # noqa: BLE001 - recorded and checked by the test
                self.errors.append(exc)
                time.sleep(0.02)
            self.slowest = max(self.slowest, time.monotonic() - start)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(CLIENT_TIMEOUT + 5)
        assert not self.thread.is_alive()

    def check(self) -> None:
        for exc in self.errors:
            assert isinstance(exc, ShmoozeError), f"not a ShmoozeError: {exc!r}"
            assert str(exc), repr(exc)
        assert self.slowest < CLIENT_TIMEOUT + 1.0, f"a call took {self.slowest:.2f} s"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # journal off: these tests are about what clients see; restoring after a kill is tests/test_restore_live.py
    with Stack(tmp_path_factory.mktemp("faults"), {"queue": "tests.apps:make_queue"}, gateway_workers=2,
               forward_timeout=CLIENT_TIMEOUT, journal=False) as stack:
        yield {"ports": stack.ports, "url": stack.url, "queue": stack.procs["queue"],
               "gateway": stack.procs["wsgi"], "direct": stack.direct("queue")}


def test_service_worker_sigkilled_under_load_then_recovers(app):
    direct = ServiceClient(app["direct"], "queue", timeout=CLIENT_TIMEOUT)
    uid = direct.add(type="good")["uid"]
    before = direct.status()
    module_pid, worker, watchdog = before["modules"][0]["pid"], before["pid"], before["watchdog_pid"]
    loops = [ClientLoop(lambda: ServiceClient(app["direct"], "queue", timeout=CLIENT_TIMEOUT).status()),
             ClientLoop(lambda: Client(app["url"], timeout=CLIENT_TIMEOUT).queue.status())]
    try:
        wait_for(lambda: all(len(lp.ok) >= 5 for lp in loops), 10, what="the client loops to run")
        os.kill(worker, signal.SIGKILL)
        # gunicorn's arbiter starts a new worker; the orphan guard ends the old worker's module
        wait_for(lambda: gone(module_pid) and gone(watchdog), 5, what="the old module and guard to end")
        wait_for(lambda: all(lp.ok and lp.ok[-1] != worker for lp in loops), 20,
                 what="both loops to reach the new worker")
    finally:
        for lp in loops:
            lp.stop()
    for lp in loops:
        lp.check()
    print(f"worker kill: {sum(len(lp.errors) for lp in loops)} clear errors, "
          f"{sum(len(lp.ok) for lp in loops)} answers; errors: {sorted({type(e).__name__ for lp in loops for e in lp.errors})}")
    status = direct.status()
    assert status["pid"] != worker and status["modules"] == []
    with pytest.raises(ShmoozeError, match=uid):
        direct.tell_module(uid=uid, cmd="echo")
    new_uid = direct.add(type="good")["uid"]
    assert direct.tell_module(uid=new_uid, cmd="echo", args={"a": 1}) == {"a": 1}
    direct.rm(uids=[new_uid])


def test_gateway_worker_replaced_while_requests_continue(app):
    gateway = app["gateway"]
    workers = gateway.remember_descendants()
    assert len(workers) == 2
    loop = ClientLoop(lambda: Client(app["url"], timeout=CLIENT_TIMEOUT).queue.status())
    shared = Client(app["url"], timeout=CLIENT_TIMEOUT)  # a kept-alive session across the restart
    loop2 = ClientLoop(lambda: shared.queue.status())
    try:
        wait_for(lambda: len(loop.ok) >= 5 and len(loop2.ok) >= 5, 10, what="requests to flow")
        os.kill(workers[0], signal.SIGTERM)
        wait_for(lambda: gone(workers[0]), 20, what="the gateway worker to exit")
        wait_for(lambda: len(set(psutil.Process(gateway.pid).children()) - {psutil.Process(workers[1])}) == 1, 20,
                 what="gunicorn to start a replacement worker")
        mark = len(loop.ok), len(loop2.ok)
        wait_for(lambda: len(loop.ok) > mark[0] + 20 and len(loop2.ok) > mark[1] + 20, 20,
                 what="requests to keep flowing")
    finally:
        loop.stop()
        loop2.stop()
    loop.check()
    loop2.check()
    print(f"gateway worker restart: {len(loop.errors) + len(loop2.errors)} errors, "
          f"{len(loop.ok) + len(loop2.ok)} answers")
    # A worker's graceful stop lets its requests finish and its kept-alive clients move on: not one error.
    assert not loop.errors and not loop2.errors, [*loop.errors, *loop2.errors][:5]
    assert len(gateway.remember_descendants()) >= 2
    assert Client(app["url"], timeout=CLIENT_TIMEOUT).queue.status()["service"] == "queue"


# -- module streams cut from outside, in-process ---------------------------------------------------

def mtype(name: str, *flags: str) -> ModuleType:
    return ModuleType(name, (sys.executable, MISBEHAVE, *flags), rm_timeout=0.3, term_timeout=0.3,
                      command_timeout=1.0)


@pytest.fixture
def queue():
    q = Queue([mtype("good"), mtype("stubborn", "--ignore-term")])
    yield q
    q.stop()


def ok(svc, _cmd, **args):
    answer = svc.dispatch(protocol.Command(_cmd, args))
    assert answer["success"] is True, (_cmd, args, answer)
    return answer.get("result")


def ended(svc, uid):
    return next((e for e in ok(svc, "status")["ended"] if e["uid"] == uid), None)


def module(svc, uid):
    return next(m for m in svc.order.entries if m.uid == uid)


@pytest.mark.parametrize("cut", ["sigkill", "sigkill-stubborn", "update-socket", "command-socket", "both-sockets"])
def test_module_cut_from_outside_is_removed_and_others_unaffected(queue, cut):
    others = [ok(queue, "add", type="good")["uid"] for _ in range(2)]
    victim = ok(queue, "add", type="stubborn" if cut == "sigkill-stubborn" else "good")["uid"]
    ok(queue, "mv", uids=[victim])  # on top: playing
    proc = module(queue, victim)
    pid = proc.pid
    if cut.startswith("sigkill"):
        os.kill(pid, signal.SIGKILL)
    else:
        # Inside: the faults are cut from outside: the handle's own sockets.
        upd, cmd = proc._upd_sock, proc._cmd_sock  # noqa: SLF001
        for sock, cuts in ((upd, ("update-socket", "both-sockets")), (cmd, ("command-socket", "both-sockets"))):
            if cut in cuts:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # the service noticed the first cut at once and closed this one already
                    assert cut == "both-sockets" and sock is cmd
    # The I/O thread notices a closed stream between commands at once: no command needs to find it.
    entry = wait_for(lambda: ended(queue, victim), 10, what="the module to be removed")
    assert entry["ended_by"] in ladder.RUNGS and entry["state"] == "stopped"
    if cut.startswith("sigkill") or cut == "command-socket":
        assert entry["ended_by"] == ladder.EXITED, entry
        assert "exited" in entry["reason"] or "closed" in entry["reason"], entry
    wait_for(lambda: gone(pid), 5, what="the module's process to end")
    assert [m["uid"] for m in ok(queue, "queue")] == others
    for uid in others:
        assert ok(queue, "tell_module", uid=uid, cmd="echo", args={"u": uid}) == {"u": uid}
    wait_for(lambda: module(queue, others[0]).told == "play", 5, what="the next module to play")


# -- resource limits during add ---------------------------------------------------------------------

WRAPPER = """
import resource, runpy, sys
kind, limit = sys.argv[1], int(sys.argv[2])
res = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC}[kind]
hard = resource.getrlimit(res)[1]
resource.setrlimit(res, (limit, hard))
sys.argv = ["shmooze"] + sys.argv[3:]
runpy.run_module("shmooze", run_name="__main__")
"""


def limited_service(tmp_path, kind: str, limit: int):
    port = free_port()
    path = write_settings(tmp_path / "settings.json", ports={"queue": port},
                          services={"queue": "tests.apps:make_queue"}, service_threads=4)
    proc = Proc([PYTHON, "-c", WRAPPER, kind, str(limit), "serve", "queue", "--settings", str(path)],
                log_path=tmp_path / "queue.log")
    try:
        wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 20, what="the limited queue")
        assert proc.popen.poll() is None, proc.log()
    except BaseException:
        proc.kill_everything()
        raise
    return proc, ServiceClient(f"http://127.0.0.1:{port}/", "queue", timeout=10)


def module_children(status) -> set[int]:
    kids = {p.pid for p in psutil.Process(status["pid"]).children()}
    return kids - {status["watchdog_pid"]}


def fill_until_refused(client, limit_words: tuple[str, ...], most: int = 200):
    uids = []
    for _ in range(most):
        try:
            uids.append(client.add(type="good")["uid"])
        except ShmoozeError as exc:
            message = str(exc)
            assert any(w in message for w in limit_words), message
            assert "Traceback" not in message and len(message) < 300
            return uids, message
    raise AssertionError(f"{most} modules started under the limit")


def test_file_descriptor_limit_reached_during_add(tmp_path):
    proc, client = limited_service(tmp_path, "nofile", 96)
    try:
        uids, message = fill_until_refused(client, ("Too many open files",))
        assert uids, "not even one module fit under the limit"
        print(f"fd limit 96: {len(uids)} modules started, then: {message}")
        status = client.status()
        listed = {m["pid"] for m in status["modules"]}
        assert [m["uid"] for m in status["modules"]] == uids
        # nothing half-started: the worker's children are exactly the listed modules (and the guard)
        wait_for(lambda: module_children(client.status()) == listed, 10, what="a half-started module to be gone")
        failed = [e for e in status["ended"] if e["start_failed"]]
        assert all(e["ended_by"] in ladder.RUNGS for e in failed)
        again = fill_until_refused(client, ("Too many open files",), most=1)[1]  # still refused, still clear
        assert "Too many open files" in again
        client.rm(uids=uids[:2])
        new = client.add(type="good")["uid"]
        assert client.tell_module(uid=new, cmd="echo", args={"x": 1}) == {"x": 1}
        assert client.status()["pid"] == status["pid"]  # the same worker served it all
    finally:
        try:
            proc.stop()
        finally:
            proc.kill_everything()


def test_process_limit_reached_during_add(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: RLIMIT_NPROC is not enforced for root (CAP_SYS_RESOURCE/CAP_SYS_ADMIN), "
                    "so the process limit cannot be reached safely here")
    mine = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == os.getuid())
    threads = sum(p.num_threads() for p in psutil.process_iter() if p.uids().real == os.getuid())
    proc, client = limited_service(tmp_path, "nproc", threads + 48)
    try:
        uids, message = fill_until_refused(client, ("Resource temporarily unavailable", "can't start new thread"))
        print(f"process limit ({mine} processes): {len(uids)} modules, then: {message}")
        status = client.status()
        wait_for(lambda: module_children(client.status()) == {m["pid"] for m in status["modules"]}, 10,
                 what="a half-started module to be gone")
        if uids:
            client.rm(uids=uids[:2])
    finally:
        try:
            proc.stop()
        finally:
            proc.kill_everything()


def test_add_and_ladder_work_with_descriptors_above_1024(queue):
    """A service holding a few hundred modules has fds above FD_SETSIZE: ``add`` must still work and
    the ladder must still wait for a clean exit (``select`` refused such fds; ``poll`` does not)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1200:
        pytest.skip(f"RLIMIT_NOFILE {soft} is too low to open 1100 descriptors")
    padding = [open(os.devnull, "rb") for _ in range(1100)]
    try:
        uid = ok(queue, "add", type="good")["uid"]
        # Inside: the socket's descriptor number: nothing public tells.
        assert module(queue, uid)._cmd_sock.fileno() > 1024  # noqa: SLF001
        assert ok(queue, "tell_module", uid=uid, cmd="echo", args={"k": 1}) == {"k": 1}
        ok(queue, "rm", uids=[uid])
        assert ended(queue, uid)["ended_by"] == ladder.RM  # it exited after rm; no SIGTERM/SIGKILL needed
    finally:
        for f in padding:
            f.close()
