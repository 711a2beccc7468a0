"""One leader among a service's candidates, through a real etcd of three members on loopback: the
election, the takeover of a SIGKILLed leader with its modules, fencing, the journal in etcd, no quorum.

The two candidates are ``shmooze serve queue`` on 127.0.0.21 and 127.0.0.23 (every 127.x address is
this machine's: ``--address`` says which candidate each is). The same on simulated hosts is in the
multi-host scenario tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from shmooze.client import ServiceClient
from shmooze.cluster import keys
from shmooze.cluster.etcd import Etcd, put_op, when
from shmooze.errors import SettingsError, ShmoozeError, TransportError
from shmooze.hosting import etcdjournal as etcd_journal
from shmooze.hosting.etcdjournal import EtcdJournal, fence_on
from shmooze.serve import build_service
from shmooze.settings import Settings, read
from shmooze.testing import etcd as etcd_kit
from tests.helpers import Proc, descendants, free_port, port_open, report_line, shmooze_argv, wait_for, write_settings

pytestmark = pytest.mark.skipif(etcd_kit.why_not() is not None, reason=str(etcd_kit.why_not()))

A, B = "127.0.0.21", "127.0.0.23"
KEY = "a-shared-service-key-for-the-leader-tests"
TTL = 3


class Candidates:
    """The queue's two candidates, each ``shmooze serve queue --address``, started and stopped by pid.
    ``etcd_for``: the etcd endpoints one candidate uses (through a :class:`Link` the test can cut)."""

    def __init__(self, tmp: Path, cluster: etcd_kit.EtcdCluster, ttl: int = TTL,
                 etcd_for: dict[str, list[str]] | None = None, **more):
        self.tmp, self.port = tmp, free_port()
        self.data = dict(ports={"queue": self.port}, services={"queue": "tests.apps:make_queue"},
                         hosts={"queue": [A, B]}, etcd=cluster.endpoints, etcd_prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                         etcd_lease_ttl=ttl, service_key=KEY, run_path=str(tmp / "run"), **more)
        self.path = write_settings(tmp / "settings.json", **self.data)
        self.paths = {address: write_settings(tmp / f"settings-{address}.json", **{**self.data, "etcd": endpoints})
                      for address, endpoints in (etcd_for or {}).items()}
        self.settings = read(self.path)
        self.procs: dict[str, Proc] = {}  # the last started on each address
        self.started: list[Proc] = []

    def start(self, address: str) -> Proc:
        path = self.paths.get(address, self.path)
        proc = Proc(shmooze_argv("serve", "queue", "--settings", str(path), "--address", address),
                    log_path=self.tmp / f"queue-{address}-{len(self.procs)}.log")
        self.procs[address] = proc
        self.started.append(proc)
        wait_for(lambda: port_open(self.port, address) or proc.exited(), 30, what=f"the candidate on {address}")
        assert not proc.exited(), proc.log()[-3000:]
        return proc

    def client(self, address: str, timeout: float = 10.0) -> ServiceClient:
        return ServiceClient(f"http://{address}:{self.port}/", "queue", timeout=timeout, key=KEY.encode())

    def status(self, address: str) -> dict:
        return self.client(address, timeout=3.0).status()

    def role(self, address: str) -> str | None:
        try:
            return self.status(address).get("role")
        except ShmoozeError:
            return None

    def modules(self, address: str) -> list[int]:
        """The pids of the module processes the candidate on ``address`` runs now."""
        proc = self.procs.get(address)
        if proc is None or proc.exited():
            return []
        return [pid for pid in descendants(proc.pid) if _is_module(pid)]

    def stop(self) -> None:
        failure = None
        for proc in self.started:
            try:
                proc.stop()
            except AssertionError as exc:
                failure = failure or exc
            finally:
                proc.kill_everything()
        if failure is not None:
            raise failure


def _is_module(pid: int) -> bool:
    try:
        return b"misbehave.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def candidates(tmp_path, cluster):
    # with a command log: its rows are not kept in a journal in etcd (the log commits its own)
    made = Candidates(tmp_path, cluster, log_database_path=str(tmp_path / "log.sqlite"))
    yield made
    made.stop()


def leader_and_standby(candidates: Candidates) -> tuple[str, str]:
    roles = wait_for(lambda: (lambda r: r if sorted(r.values()) == ["LEADER", "STANDBY"] else None)(
        {a: candidates.role(a) for a in (A, B)}), 30, interval=0.1, what="one leader and one standby")
    leader = next(a for a, role in roles.items() if role == "LEADER")
    leading(candidates, leader)
    return leader, B if leader == A else A


def test_one_leader_one_standby_and_status_says_so(candidates) -> None:
    candidates.start(A)
    candidates.start(B)
    leader, standby = leader_and_standby(candidates)
    status = candidates.status(standby)
    assert status["leader"]["url"] == f"http://{leader}:{candidates.port}" and status["quorum"] is True
    # the standby takes no change and runs nothing; the leader does
    with pytest.raises(TransportError) as refused:
        candidates.client(standby).call("add", {"type": "good"})
    assert refused.value.status == 503 and "standby" in str(refused.value)
    uid = candidates.client(leader).call("add", {"type": "good"})["uid"]
    assert [m["uid"] for m in candidates.client(leader).call("queue")] == [uid]
    assert candidates.modules(standby) == [] and len(candidates.modules(leader)) == 1
    # the registration in etcd says where the leader is reached
    etcd = Etcd(candidates.settings.etcd)
    try:
        entry = etcd.get(keys.service_key(candidates.settings, "queue"))
        assert keys.Registration.decode(entry.value).url == f"http://{leader}:{candidates.port}" and entry.lease
    finally:
        etcd.close()
    # the metrics carry the role
    assert _gauge(candidates.client(leader).call("metrics"), "shmooze_leader") == 1.0
    assert _gauge(candidates.client(standby).call("metrics"), "shmooze_leader") == 0.0


def _gauge(families: list, name: str) -> float:
    return next(f["samples"][0][2] for f in families if f["name"] == name)


def test_candidates_listen_on_their_own_address_and_are_reached_there(monkeypatch) -> None:
    monkeypatch.delenv("SHMOOZE_ADDRESS", raising=False)
    placed = Settings({"ports": {"queue": 8081, "pool": 8082}, "hosts": {"queue": [A, B], "pool": "10.255.0.9"}})
    assert placed.hosts == {"queue": [A, B], "pool": ["10.255.0.9"]}  # one address, as before, is a list of one
    # without --address, the first candidate that is an address of this host (all of 127/8 is)
    assert placed.listen_address("queue") == A and placed.address("queue") == A
    assert placed.listen_address("pool") == "10.255.0.9" and placed.url("pool") == "http://10.255.0.9:8082"  # as before
    monkeypatch.setenv("SHMOOZE_ADDRESS", B)
    assert placed.own_address("queue") == B and placed.listen_address("queue") == B
    assert placed.address("queue") == A and placed.reached_at("queue") == B  # without etcd others reach the first
    assert placed.listen_address("pool") == "127.0.0.1"  # this host is not the pool's
    monkeypatch.delenv("SHMOOZE_ADDRESS")
    # a name in hosts is where others reach the service, never what it binds (it was Errno 99)
    named = Settings({"ports": {"queue": 8081}, "hosts": {"queue": "queue.service.consul"}, "service_key": KEY})
    assert named.listen_address("queue") == "127.0.0.1" and named.url("queue") == "http://queue.service.consul:8081"
    behind = Settings({"ports": {"queue": 8081, "pool": 8082}, "hosts": {"queue": "queue.default.svc"},
                       "listen": {"queue": "0.0.0.0"}})
    assert behind.listen_address("queue") == "0.0.0.0" and behind.address("queue") == "queue.default.svc"
    assert behind.listen_address("pool") == "127.0.0.1"
    everywhere = Settings({"ports": {"queue": 8081}, "hosts": {"queue": [A, B]}, "listen": "0.0.0.0"})
    assert everywhere.listen_address("queue") == "0.0.0.0" and everywhere.reached_at("queue") == A


def test_settings_errors_are_clear(tmp_path) -> None:
    with pytest.raises(SettingsError, match="an address or a list of addresses"):
        Settings({"ports": {"q": 1}, "hosts": {"q": []}})
    with pytest.raises(SettingsError, match="lists an address twice"):
        Settings({"ports": {"q": 1}, "hosts": {"q": [A, A]}})
    with pytest.raises(SettingsError, match="'listen' names 'nope'"):
        Settings({"ports": {"q": 1}, "listen": {"nope": "0.0.0.0"}})
    with pytest.raises(SettingsError, match="etcd_lease_ttl"):
        Settings({"ports": {"q": 1}, "etcd_lease_ttl": 1})
    with pytest.raises(SettingsError, match=r"'slow' of 'queue' is bound to the host '10.255.0.3' \(its place\), which "
                                            r"is not among the candidates of 'queue' in 'hosts' \(127.0.0.21, 127.0.0.23\)"):
        build_service(Settings({"ports": {"queue": 1}, "services": {"queue": "tests.apps:make_queue"},
                                "hosts": {"queue": [A, B]}, "module_types": {"slow": {"place": "10.255.0.3"}}}), "queue")
    path = write_settings(tmp_path / "s.json", ports={"queue": free_port()}, services={"queue": "tests.apps:make_queue"},
                          hosts={"queue": ["10.255.0.1", "10.255.0.2"]}, service_key=KEY)
    done = Proc(shmooze_argv("serve", "queue", "--settings", str(path)), log_path=tmp_path / "serve.log")
    assert done.popen.wait(60) == 2
    assert "none of the candidates of 'queue' (10.255.0.1, 10.255.0.2)" in done.log() and "Traceback" not in done.log()


class Sampler:
    """How many module processes each candidate runs, sampled every 100 ms on a thread of its own."""

    def __init__(self, candidates: Candidates):
        self.candidates = candidates
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        self.samples.append((time.monotonic(), len(self.candidates.modules(A)), len(self.candidates.modules(B))))

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join(5)
        self.sample()
        return self.samples


class Link:
    """TCP forwarders to the etcd members that the test cuts silently (a link down: what is sent is dropped,
    nothing is refused) and heals."""

    def __init__(self, endpoints: list[str]):
        self.cut = threading.Event()
        self.servers: list[socket.socket] = []
        self.conns: list[socket.socket] = []
        self.endpoints = []
        for url in endpoints:
            parts = urlsplit(url)
            server = socket.create_server(("127.0.0.1", 0))
            self.servers.append(server)
            self.endpoints.append(f"http://127.0.0.1:{server.getsockname()[1]}")
            threading.Thread(target=self._accept, args=(server, (parts.hostname, parts.port)), daemon=True).start()

    def _accept(self, server: socket.socket, target: tuple) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(target, timeout=2)
            except OSError:
                return
            upstream.settimeout(None)
            self.conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.cut.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def heal(self) -> None:
        """Forward again; the connections that lost bytes are closed (their clients connect afresh)."""
        self.cut.clear()
        for sock in list(self.conns):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for sock in self.servers + self.conns:
            sock.close()


def leading(candidates: Candidates, address: str) -> None:
    """Wait until the candidate on ``address`` leads and takes changes (its journal read)."""
    def serving() -> bool:
        try:
            return candidates.status(address).get("serving") is True
        except ShmoozeError:
            return False
    wait_for(serving, 30, interval=0.1, what=f"{address} to lead")


def standing_by(candidates: Candidates, address: str) -> None:
    wait_for(lambda: candidates.role(address) == "STANDBY", 30, interval=0.1, what=f"{address} to stand by")


def a_leads_b_stands_by(candidates: Candidates) -> None:
    """Start the candidate on A, wait until it leads, then the one on B, which stands by."""
    candidates.start(A)
    leading(candidates, A)
    candidates.start(B)
    standing_by(candidates, B)


def add_modules(candidates: Candidates, count: int) -> list[str]:
    """``count`` modules added on the leader A, once their processes run; their uids."""
    uids = [candidates.client(A).call("add", {"type": "good"})["uid"] for _ in range(count)]
    wait_for(lambda: len(candidates.modules(A)) == count, 10, what="the leader's modules")
    return uids


def queue_of(candidates: Candidates, address: str) -> tuple[list[str], str | None]:
    client = candidates.client(address)
    background = client.call("bg")
    return [m["uid"] for m in client.call("queue")], background["uid"] if background else None


def test_the_standby_takes_over_a_killed_leader_with_the_same_modules(candidates, request) -> None:
    a_leads_b_stands_by(candidates)
    client = candidates.client(A)
    uids = [client.call("add", {"type": "good", "args": {"n": n}})["uid"] for n in range(3)]
    client.call("mv", {"uids": [uids[2], uids[0]]})
    background = client.call("set_bg", {"type": "bg"})["uid"]
    before = queue_of(candidates, A)
    assert before == ([uids[2], uids[0], uids[1]], background)
    # the leader's host is lost: every process of it SIGKILLed at once
    proc = candidates.procs[A]
    victims = [proc.pid, *descendants(proc.pid)]
    killed = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    leading(candidates, B)
    elected = time.monotonic() - killed

    def restored() -> bool:
        modules = candidates.status(B).get("modules", [])
        return queue_of(candidates, B) == before and len(modules) == 4 and \
            all(m["state"] in ("playing", "suspended", "running") for m in modules)

    wait_for(restored, 30, interval=0.05, what="the same modules, order and background on the new leader")
    running = time.monotonic() - killed
    assert len(candidates.modules(B)) == 4
    report_line(request, f"takeover after SIGKILL (lease {TTL} s): elected in {elected:.2f} s, every module "
                         f"restored and running in {running:.2f} s")
    assert elected < TTL + 3
    # what it does next is kept too
    uid = candidates.client(B).call("add", {"type": "good"})["uid"]
    assert queue_of(candidates, B)[0] == [*before[0], uid]


def test_a_leader_cut_off_from_etcd_stops_its_modules_before_the_standby_starts_them(tmp_path, cluster, request):
    link = Link(cluster.endpoints)
    candidates = Candidates(tmp_path, cluster, etcd_for={A: link.endpoints})
    try:
        a_leads_b_stands_by(candidates)
        uids = add_modules(candidates, 2)
        sampler = Sampler(candidates)
        cut = time.monotonic()
        link.cut.set()
        wait_for(lambda: candidates.modules(A) == [], 10, interval=0.05, what="the cut-off leader to stop its modules")
        stopped = time.monotonic() - cut
        wait_for(lambda: len(candidates.modules(B)) == 2 and queue_of(candidates, B)[0] == uids, 30, interval=0.05,
                 what="the standby to take over")
        taken = time.monotonic() - cut
        samples = sampler.stop()
        both = [s for s in samples if s[1] and s[2]]
        assert not both, f"both candidates ran modules at once: {both}"
        last_a = max(t for t, a, _ in samples if a) if any(a for _, a, _ in samples) else cut
        first_b = min(t for t, _, b in samples if b)
        assert last_a < first_b
        report_line(request, f"fencing (lease {TTL} s): the cut-off leader's modules gone {stopped:.2f} s after the "
                             f"cut, the standby's running {taken:.2f} s after it ({len(samples)} samples, never both)")
        assert stopped < TTL
        # the link back: the old leader stands by and runs nothing
        link.heal()
        wait_for(lambda: candidates.role(A) == "STANDBY" and candidates.status(A)["quorum"]
                 and not candidates.status(A)["etcd_problem"], 30, interval=0.1, what="the old leader to stand by")
        assert candidates.modules(A) == [] and "fenced" in candidates.procs[A].log()
    finally:
        candidates.stop()
        link.close()


def test_a_deposed_leader_can_write_nothing_and_the_journal_reads_back_whole(cluster) -> None:
    settings = Settings({"ports": {"queue": 1}, "etcd": cluster.endpoints, "etcd_prefix": f"/t-{uuid.uuid4().hex[:8]}/"})
    key, prefix = keys.service_key(settings, "queue"), keys.journal_prefix(settings, "queue")
    etcd = Etcd(cluster.endpoints)
    deposed: list[str] = []
    try:
        lease = etcd.grant(30)
        won, answer = etcd.txn([when(key, "CREATE", "EQUAL", 0)], [put_op(key, "leader", lease)])
        assert won
        journal = EtcdJournal(etcd, prefix, "queue", fence_on(key, int(answer["header"]["revision"])), deposed.append,
                              lambda exc: None, compact_after=3)
        big = "x" * (400 * 1024)  # four of them: a snapshot over one request, written in chunks
        for n in range(8):
            since = journal.tickets
            journal.added(f"q-{n}", "good", {"n": n, "big": big if n < 4 else ""})
            assert journal.sync(since) is None
        since = journal.tickets
        journal.removed(["q-1"])
        journal.ordered(["q-5", "q-0"])
        journal.parameters("q-2", lambda: {"volume": 5})  # (coalesced: written within params_interval, or flushed)
        assert journal.sync(since) is None and journal.flush()
        assert journal.compactions >= 2
        entries, _, _, problem = etcd_journal.read(etcd, prefix)
        assert problem is None
        assert [e["uid"] for e in entries] == ["q-5", "q-0", "q-2", "q-3", "q-4", "q-6", "q-7"]
        assert entries[1]["args"] == {"n": 0, "big": big} and entries[2]["parameters"] == {"volume": 5}
        # another process wins the key: this one's writes are refused, and it learns it is deposed
        etcd.revoke(lease)
        other = etcd.grant(30)
        assert etcd.txn([when(key, "CREATE", "EQUAL", 0)], [put_op(key, "another", other)])[0]
        since = journal.tickets
        journal.added("q-99", "good", {})
        problem = journal.sync(since)
        assert problem is not None and "no longer the leader" in problem and deposed
        assert "q-99" not in [e["uid"] for e in etcd_journal.read(etcd, prefix)[0]]
        journal.close()
        etcd.revoke(other)
    finally:
        etcd.delete(settings.etcd_prefix, prefix=True)
        etcd.close()


def test_no_quorum_refuses_changes_answers_reads_and_restarts_nothing(tmp_path, cluster, request) -> None:
    ttl = 5
    candidates = Candidates(tmp_path, cluster, ttl=ttl)
    try:
        a_leads_b_stands_by(candidates)
        uids = add_modules(candidates, 2)
        pids = sorted(candidates.modules(A))
        try:
            cluster.stop_member(1)  # one member lost: nothing changes (changes wait out etcd's own election)
            uids.append(wait_for(lambda: _added(candidates.client(A)), 15, interval=0.2, what="a change taken"))
            pids = sorted(set(pids) | set(wait_for(lambda: len(candidates.modules(A)) == 3 and candidates.modules(A),
                                                   10, what="the third module")))
            assert candidates.role(A) == "LEADER" and candidates.role(B) == "STANDBY"
            cluster.stop_member(2)
            wait_for(lambda: candidates.status(A)["quorum"] is False, 20, interval=0.1, what="the leader to see no quorum")
            with pytest.raises(TransportError) as refused:
                candidates.client(A).call("add", {"type": "good"})
            assert refused.value.status == 503 and "no quorum" in str(refused.value)
            # Watched for longer than the lease: reads answer, nothing stops or restarts, nobody else leads.
            until = time.monotonic() + ttl * 1.5
            while time.monotonic() < until:
                assert queue_of(candidates, A)[0] == uids
                assert sorted(candidates.modules(A)) == pids and candidates.modules(B) == []
                assert candidates.role(A) == "LEADER" and candidates.role(B) == "STANDBY"
        finally:
            for member in (1, 2):
                if member not in cluster.procs:
                    cluster.start_member(member)
            cluster.wait_healthy()
        back = time.monotonic()
        wait_for(lambda: candidates.status(A)["quorum"] and candidates.client(A).call("add", {"type": "good"}), 20,
                 interval=0.2, what="changes to be taken again")
        report_line(request, f"no quorum: changes refused (503), reads answered, nothing restarted; changes taken "
                             f"again {time.monotonic() - back:.2f} s after the quorum was back")
        assert set(pids) <= set(candidates.modules(A)) and candidates.role(A) == "LEADER"
    finally:
        candidates.stop()


def member_status(url: str) -> tuple[int, int] | None:
    """The etcd member at ``url``: its id and its leader's (0: none), from its own status; None if it does not answer."""
    try:
        status = requests.post(f"{url}/v3/maintenance/status", json={}, timeout=1).json()
        return int(status["header"]["member_id"]), int(status.get("leader", 0))
    except (requests.RequestException, ValueError, KeyError):
        return None


def has_no_leader(url: str) -> bool:
    found = member_status(url)
    return found is not None and found[1] == 0


def test_a_member_frozen_and_two_down_prove_nothing_the_leader_fences(tmp_path, cluster, request) -> None:
    """The etcd leader frozen (SIGSTOP: its port takes connections, nothing answers), the two others SIGKILLed:
    two members down seemed to prove that no majority could be working, but the frozen one may be a leader
    paused. When it wakes, its lessor finds the lease unrenewed for longer than its TTL and proposes its
    revocation, before etcd's own check makes it step down; elected again once a member is back, it commits
    that revocation first: the standby wins while the old leader, which had counted on no lease expiring,
    still runs its modules (seen before the fix, in 2 of 4 runs with a 2 s lease: "fenced: its lease expired",
    the standby elected 12 ms later). So nothing is proven while a member is silent: the leader fences in time."""
    ttl = 3
    candidates = Candidates(tmp_path, cluster, ttl=ttl)
    try:
        a_leads_b_stands_by(candidates)
        add_modules(candidates, 1)
        leader = next(index for index, url in enumerate(cluster.endpoints)
                      if (found := member_status(url)) and found[0] == found[1])
        frozen = cluster.procs[leader].pid
        sampler = Sampler(candidates)
        try:
            os.kill(frozen, signal.SIGSTOP)
            for member in sorted(set(cluster.procs) - {leader}):
                cluster.stop_member(member)
            lost = time.monotonic()
            wait_for(lambda: candidates.modules(A) == [], ttl, interval=0.05, what="the leader to stop its modules")
            report_line(request, f"a member frozen, two down: the leader's modules gone {time.monotonic() - lost:.2f} s "
                                 f"after (lease {ttl} s)")
            assert "fenced: its lease could not be renewed" in candidates.procs[A].log()
        finally:
            os.kill(frozen, signal.SIGCONT)
            for member in range(len(cluster.endpoints)):
                if member not in cluster.procs:
                    cluster.start_member(member)
            cluster.wait_healthy()
        # etcd back: whoever leads now, the two never ran modules at once
        leader_and_standby(candidates)
        samples = sampler.stop()
        both = [sample for sample in samples if sample[1] and sample[2]]
        assert not both, f"both candidates ran modules at once: {both[:5]}"
    finally:
        candidates.stop()


def test_members_that_take_connections_and_answer_nothing_prove_nothing(tmp_path, cluster) -> None:
    """Two members frozen (SIGSTOP: their ports take connections, nothing answers, as members that are starting
    look until they elect a leader), the third without a leader: the two may be a majority working without the
    third (two members restarted together elect a leader in some 60 ms while the third still answers that it has
    none), so nothing is proven and the leader fences itself: its modules are gone, by its deadline."""
    ttl = 3
    candidates = Candidates(tmp_path, cluster, ttl=ttl)
    frozen = [cluster.procs[member].pid for member in (0, 1)]
    try:
        a_leads_b_stands_by(candidates)
        add_modules(candidates, 1)
        try:
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: has_no_leader(cluster.endpoints[2]), 15, interval=0.05, what="member 2 without a leader")
            lost = time.monotonic()
            # fenced 0.6 x the lease after its last safe moment, its modules killed by 0.9 x the lease after it
            wait_for(lambda: candidates.modules(A) == [], ttl, interval=0.05, what="the leader to stop its modules")
            log = candidates.procs[A].log()
            assert "fenced: its lease could not be renewed" in log, log[-2000:]
            assert time.monotonic() - lost < ttl
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            cluster.wait_healthy()
    finally:
        candidates.stop()


def _added(client: ServiceClient) -> str | None:
    try:
        return client.call("add", {"type": "good"})["uid"]
    except ShmoozeError:
        return None


def test_a_type_bound_to_a_place_is_kept_stopped_elsewhere_and_a_stopped_leader_hands_over_at_once(
        tmp_path, cluster, request) -> None:
    candidates = Candidates(tmp_path, cluster, module_types={"slow": {"place": A}})
    try:
        a_leads_b_stands_by(candidates)
        good, speaker = (candidates.client(A).call("add", {"type": kind})["uid"] for kind in ("good", "slow"))
        proc = candidates.procs[A]
        for pid in [proc.pid, *descendants(proc.pid)]:
            os.kill(pid, signal.SIGKILL)
        leading(candidates, B)
        wait_for(lambda: candidates.status(B).get("held"), 30, interval=0.1, what="the bound module held")
        status = candidates.status(B)
        assert [m["uid"] for m in status["modules"]] == [good] and len(candidates.modules(B)) == 1
        assert status["held"][0]["uid"] == speaker and f"bound to the host {A}" in status["held"][0]["reason"]
        with pytest.raises(ShmoozeError, match=f"bound to the host {A}"):
            candidates.client(B).call("add", {"type": "slow"})
        # its own host back (standing by), the leader stopped: the lease is ended at once, not waited for,
        # and the speaker runs again in its room
        candidates.start(A)
        standing_by(candidates, A)
        signalled = time.monotonic()
        candidates.procs[B].stop()
        stopped = time.monotonic()
        leading(candidates, A)
        handed = time.monotonic() - stopped
        wait_for(lambda: queue_of(candidates, A)[0] == [good, speaker] and len(candidates.modules(A)) == 2, 30,
                 interval=0.05, what="both modules on their own host")
        report_line(request, f"a leader stopped (SIGTERM): it ended {stopped - signalled:.2f} s after the signal, "
                             f"the standby leads {handed:.2f} s after that (lease {TTL} s, not waited for)")
        assert handed < TTL
    finally:
        candidates.stop()


def test_shmooze_run_on_each_candidate_shows_leader_and_standby_in_status(tmp_path, cluster) -> None:
    """``shmooze run --services queue --address`` on each candidate (here two settings files, one run folder each,
    as two hosts would have): ``shmooze status`` on each says which leads."""
    port, prefix = free_port(), f"/t-{uuid.uuid4().hex[:8]}/"
    runs, paths = [], {}
    try:
        for address in (A, B):
            paths[address] = write_settings(
                tmp_path / f"{address}.json", ports={"queue": port}, services={"queue": "tests.apps:make_queue"},
                hosts={"queue": [A, B]}, etcd=cluster.endpoints, etcd_prefix=prefix, etcd_lease_ttl=TTL,
                service_key=KEY, run_path=str(tmp_path / f"run-{address}"))
            runs.append(Proc(shmooze_argv("run", "--settings", str(paths[address]), "--services", "queue", "--address",
                                          address), log_path=tmp_path / f"run-{address}.log"))
            wait_for(lambda run=runs[-1]: "running" in run.log() or run.exited(), 60, interval=0.1,
                     what="shmooze run to start")
            assert not runs[-1].exited(), runs[-1].log()

        def roles() -> dict[str, str] | None:
            found = {}
            for address in (A, B):
                out = subprocess.run(shmooze_argv("status", "--json", "--settings", str(paths[address])),
                                     capture_output=True, text=True, timeout=60)
                status = json.loads(out.stdout)["services"]["queue"].get("status") or {}
                found[address] = status.get("role")
            return found if sorted(found.values()) == ["LEADER", "STANDBY"] else None

        found = wait_for(roles, 30, interval=0.2, what="one leader and one standby in shmooze status")
        standby = A if found[A] == "STANDBY" else B
        table = subprocess.run(shmooze_argv("status", "--settings", str(paths[standby])), capture_output=True,
                               text=True, timeout=60).stdout
        assert "RUNNING STANDBY" in table and f"STANDBY: leader http://{B if standby == A else A}:{port}" in table
    finally:
        for run in runs:
            try:
                run.stop()
            finally:
                run.kill_everything()
