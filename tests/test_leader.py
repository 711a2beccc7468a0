"""One leader among a service's candidates, through a real etcd of three members on loopback: the
election, the takeover of a SIGKILLed leader with its modules, fencing, the journal in etcd, no quorum.

The two candidates are ``shmooze serve queue`` on 127.0.0.21 and 127.0.0.23 (every 127.x address is
this machine's: ``--address`` says which candidate each is). The same on simulated hosts is in the
multi-host scenario tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shmooze.client import ServiceClient
from shmooze.cluster import keys
from shmooze.cluster.etcd import Etcd
from shmooze.errors import SettingsError, ShmoozeError, TransportError
from shmooze.settings import Settings, read
from shmooze.testing import etcd as etcd_kit
from tests.helpers import Proc, descendants, free_port, port_open, shmooze_argv, wait_for, write_settings

pytestmark = pytest.mark.skipif(etcd_kit.why_not() is not None, reason=str(etcd_kit.why_not()))

A, B = "127.0.0.21", "127.0.0.23"
KEY = "a-shared-service-key-for-the-leader-tests"
TTL = 3


@pytest.fixture(scope="module")
def cluster():
    members = etcd_kit.EtcdCluster(3)
    try:
        members.start()
        yield members
    finally:
        members.stop()


class Candidates:
    """The queue's two candidates, each ``shmooze serve queue --address``, started and stopped by pid."""

    def __init__(self, tmp: Path, cluster: etcd_kit.EtcdCluster, **more):
        self.tmp, self.port = tmp, free_port()
        self.path = write_settings(tmp / "settings.json", ports={"queue": self.port},
                                   services={"queue": "tests.apps:make_queue"}, hosts={"queue": [A, B]},
                                   etcd=cluster.endpoints, etcd_prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                                   etcd_lease_ttl=TTL, service_key=KEY, run_path=str(tmp / "run"), **more)
        self.settings = read(self.path)
        self.procs: dict[str, Proc] = {}

    def start(self, address: str) -> Proc:
        proc = Proc(shmooze_argv("serve", "queue", "--settings", str(self.path), "--address", address),
                    log_path=self.tmp / f"queue-{address}-{len(self.procs)}.log")
        self.procs[address] = proc
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
        for proc in self.procs.values():
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
    made = Candidates(tmp_path, cluster)
    yield made
    made.stop()


def leader_and_standby(candidates: Candidates) -> tuple[str, str]:
    roles = wait_for(lambda: (lambda r: r if sorted(r.values()) == ["LEADER", "STANDBY"] else None)(
        {a: candidates.role(a) for a in (A, B)}), 30, interval=0.1, what="one leader and one standby")
    leader = next(a for a, role in roles.items() if role == "LEADER")
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


def test_settings_errors_are_clear(tmp_path) -> None:
    with pytest.raises(SettingsError, match="an address or a list of addresses"):
        Settings({"ports": {"q": 1}, "hosts": {"q": []}})
    with pytest.raises(SettingsError, match="lists an address twice"):
        Settings({"ports": {"q": 1}, "hosts": {"q": [A, A]}})
    with pytest.raises(SettingsError, match="'listen' names 'nope'"):
        Settings({"ports": {"q": 1}, "listen": {"nope": "0.0.0.0"}})
    with pytest.raises(SettingsError, match="etcd_lease_ttl"):
        Settings({"ports": {"q": 1}, "etcd_lease_ttl": 1})
    path = write_settings(tmp_path / "s.json", ports={"queue": free_port()}, services={"queue": "tests.apps:make_queue"},
                          hosts={"queue": ["10.255.0.1", "10.255.0.2"]}, service_key=KEY)
    done = Proc(shmooze_argv("serve", "queue", "--settings", str(path)), log_path=tmp_path / "serve.log")
    assert done.popen.wait(60) == 2
    assert "none of the candidates of 'queue' (10.255.0.1, 10.255.0.2)" in done.log() and "Traceback" not in done.log()
