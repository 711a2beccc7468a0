"""Discovery through etcd (shmooze.cluster.directory) against a real three-member cluster on loopback:
the directory alone, then a real gateway that follows a service from one port to another, says so
with a 503 while the service has no registration, and resumes pushes at once when it has one again."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shmooze.client import ServiceClient
from shmooze.cluster import keys
from shmooze.cluster.directory import Directory
from shmooze.cluster.etcd import Etcd
from shmooze.cluster.keys import Registration
from shmooze.errors import TransportError
from shmooze.http.forward import ForwardError, ServiceProxy
from shmooze.servicekey import Signer
from shmooze.settings import Settings, read
from shmooze.testing import WebSocketClient
from shmooze.testing import etcd as etcd_kit
from tests.helpers import Stack, free_port, start_service, stop_all, wait_for, write_settings

pytestmark = pytest.mark.skipif(etcd_kit.why_not() is not None, reason=str(etcd_kit.why_not()))
log = logging.getLogger(__name__)

KEY = "directory-test-service-key-0123456789"
TOKEN = "directory-test-token"


def settings_for(cluster: etcd_kit.EtcdCluster, prefix: str) -> Settings:
    return Settings({"ports": {"wsgi": free_port(), "volume": free_port()}, "etcd": cluster.endpoints,
                     "etcd_prefix": prefix})


def test_the_directory_reads_once_then_follows_every_change(cluster) -> None:
    settings = settings_for(cluster, "/t-dir/")
    etcd = Etcd(cluster.endpoints)
    first = Registration.now("http://127.0.0.1:1001", "a", 11)
    etcd.put(keys.service_key(settings, "queue"), first.encode())
    etcd.put(keys.service_key(settings, "junk"), b"not a registration")
    directory = Directory.for_settings(settings).start(wait=5)
    heard: list[tuple[str, Registration | None]] = []
    changed = threading.Event()

    def listener(name: str, found: Registration | None) -> None:
        heard.append((name, found))
        changed.set()

    directory.subscribe(listener)
    try:
        assert directory.loaded.is_set() and directory.url("queue") == "http://127.0.0.1:1001"
        assert directory.url("junk") is None and directory.url("pool") is None
        # moved: the callback within the watch's delay, url() at once after
        moved = Registration.now("http://127.0.0.1:1002", "b", 12)
        lease = etcd.grant(5)
        started = time.monotonic()
        etcd.put(keys.service_key(settings, "queue"), moved.encode(), lease=lease)
        assert changed.wait(2)
        follow = time.monotonic() - started
        assert heard[-1] == ("queue", moved) and directory.url("queue") == moved.url
        log.info("the directory heard a move in %.3f s", follow)
        assert follow < 1.0
        # its lease ended: no registration
        changed.clear()
        etcd.revoke(lease)
        assert changed.wait(2) and heard[-1] == ("queue", None) and directory.url("queue") is None
        # one member lost: the watch goes on through another
        cluster.stop_member(0)
        try:
            changed.clear()
            etcd.put(keys.service_key(settings, "queue"), first.encode())
            assert changed.wait(10) and directory.url("queue") == first.url
        finally:
            cluster.start_member(0)
            cluster.wait_healthy()
    finally:
        directory.close()
        etcd.delete("/t-dir/", prefix=True)
        etcd.close()


def test_a_directory_started_while_etcd_is_away_reads_once_it_answers(cluster) -> None:
    """Started with no member answering, it knows nothing (not "no registration": ``loaded`` is unset)
    and reads on its own once one answers."""
    settings = settings_for(cluster, "/t-dir-late/")
    etcd = Etcd(cluster.endpoints)
    etcd.put(keys.service_key(settings, "queue"), Registration.now("http://127.0.0.1:1003", "c", 13).encode())
    for index in range(3):
        cluster.stop_member(index)
    directory = Directory.for_settings(settings)
    try:
        directory.start(wait=0.5)
        assert not directory.loaded.is_set() and directory.problem and directory.url("queue") is None
        for index in range(3):
            cluster.start_member(index)
        cluster.wait_healthy()
        wait_for(lambda: directory.url("queue") == "http://127.0.0.1:1003", 20, what="the late first read")
    finally:
        directory.close()
        etcd.delete("/t-dir-late/", prefix=True)
        etcd.close()


def volume_on(tmp, port: int, name: str):
    """A Volume service on ``port`` (its own settings: it knows nothing of etcd; the test registers it)."""
    path = write_settings(tmp / f"{name}.json", ports={"wsgi": free_port(), "volume": port},
                          services={"volume": "jukebox.volume:Volume"}, service_key=KEY)
    return start_service(path, "volume", tmp)


def watch_retries(url: str) -> float:
    """How many times the gateway's watchers could not reach their service (every worker's)."""
    answer = requests.get(url + "metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    return sum(sample.value for family in text_string_to_metric_families(answer.text) for sample in family.samples
               if sample.name == "shmooze_push_watch_retries_total")


def served_by(url: str) -> int | str:
    """The pid of the process that answered ``status`` through the gateway, else the HTTP error."""
    answer = requests.post(url + "volume", json={"cmd": "status"}, timeout=5)
    if answer.status_code != 200:
        return f"{answer.status_code} {answer.json().get('error')}"
    return answer.json()["result"]["pid"]


def long_poll(proxy: ServiceProxy, version: int) -> object:
    try:
        return proxy.post(json.dumps({"cmd": "changes", "args": {"since": version, "timeout": 20}}).encode())
    except ForwardError as exc:
        return exc


def test_the_gateway_follows_a_service_that_moves_and_says_when_it_has_no_leader(cluster, tmp_path) -> None:
    prefix = "/t-gw/"
    port_a, port_b = free_port(), free_port()
    stack = Stack(tmp_path, {"volume": "jukebox.volume:Volume"}, ports={"wsgi": free_port(), "volume": port_a},
                  etcd=cluster.endpoints, etcd_prefix=prefix, service_key=KEY, gateway_workers=2, access_token=TOKEN)
    etcd = Etcd(cluster.endpoints)
    key = f"{prefix}services/volume"
    procs = []
    try:
        a, b = volume_on(tmp_path, port_a, "a"), volume_on(tmp_path, port_b, "b")
        procs += [a, b]
        pid_a, pid_b = (requests.post(f"http://127.0.0.1:{p}/", json={"cmd": "status"}, timeout=5).json()["result"]["pid"]
                        for p in (port_a, port_b))
        stack.start("wsgi")
        # no registration yet: a clear 503, never a sign-in prompt (twice in a row: the second finds the
        # service's commands unknown without asking again)
        for _ in range(2):
            answer = requests.post(stack.url + "volume", json={"cmd": "set_volume", "args": {"level": 5}}, timeout=5)
            assert answer.status_code == 503 and "has no leader right now" in answer.json()["error"], answer.text
        etcd.put(key, Registration.now(f"http://127.0.0.1:{port_a}", "a", pid_a).encode())
        wait_for(lambda: served_by(stack.url) == pid_a, 5, what="the gateway to reach A")
        own = ServiceClient.on_port(read(stack.path), "volume", timeout=5)
        assert own.status()["pid"] == pid_a

        with WebSocketClient.connect(stack.ws, timeout=5) as ws:
            ws.send(json.dumps({"id": 1, "subscribe": {"volume": None}}))
            assert "result" in json.loads(ws.receive(5))
            # moved to B: every worker sends there within 1 s (twenty answers in a row from B)
            started = time.monotonic()
            etcd.put(key, Registration.now(f"http://127.0.0.1:{port_b}", "b", pid_b).encode())
            rounds: list[float] = []  # when each check began: the one that passed began after both followed

            def all_from_b() -> bool:
                rounds.append(time.monotonic())
                return all(served_by(stack.url) == pid_b for _ in range(20))

            wait_for(all_from_b, 5, what="the gateway to follow")
            follow = rounds[-1] - started
            # a service's own client (ServiceClient.on_port) follows too, the same object
            assert wait_for(lambda: own.status()["pid"] == pid_b, 5, what="on_port to follow")
            log.info("the gateway followed a move in %.3f s", follow)
            assert follow < 1.0, f"the gateway took {follow:.2f} s to follow the service"
            # between leaders: 503 saying so; the push watcher backs off meanwhile
            etcd.delete(key)
            wait_for(lambda: "has no leader right now" in str(served_by(stack.url)), 5, what="the 503")
            with pytest.raises(TransportError, match="has no leader right now") as refused:
                wait_for(lambda: own.status() and False, 5, what="on_port to hear there is no leader")
            assert refused.value.status == 503
            # not a reason for a load balancer to take the gateway out: every gateway sees the same
            health = requests.get(stack.url + "healthz", timeout=5)
            assert health.status_code == 200 and "no leader" in health.json()["down"]["volume"], health.text
            # the watcher's pause between tries grows while the service has no address: let it reach its
            # longest (five tries: 0.05, 0.1, 0.2, 0.4, then 0.5 s), so that only the nudge can be quick
            tried = watch_retries(stack.url)
            wait_for(lambda: watch_retries(stack.url) >= tried + 5, 10, what="the watcher to back off")
            # back (at A): a change there is pushed within 1 s of the registration
            etcd.put(key, Registration.now(f"http://127.0.0.1:{port_a}", "a", pid_a).encode())
            started = time.monotonic()
            wait_for(lambda: served_by(stack.url) == pid_a, 5, what="the gateway to follow back")
            changed = requests.post(f"{stack.url}volume", json={"cmd": "set_volume", "args": {"level": 77}},
                                    timeout=5, headers={"Authorization": f"Bearer {TOKEN}"})
            assert changed.status_code == 200, changed.text
            # the change reaches the page: as its event, or as a reset (reload) from a version that includes
            # it, when the watcher first asked A after the change (the version it held was B's)
            after = requests.post(f"http://127.0.0.1:{port_a}/", json={"cmd": "changes", "args": {"since": 0}},
                                  timeout=5).json()["result"]["version"]
            while True:
                text = ws.receive(max(0.1, started + 5 - time.monotonic()))
                assert text is not None, "no push within 5 s of the service coming back"
                message = json.loads(text)
                if message.get("event") != "change" or message["version"] < after:
                    continue
                assert message.get("reset") or any(e.get("level") == 77 for e in message["events"]), message
                break
            pushed = time.monotonic() - started
            log.info("a push came %.3f s after the service was registered again", pushed)
            assert pushed < 1.0, f"pushes resumed {pushed:.2f} s after the service came back"
        # a long poll in flight to the old address is cut when the proxy moves (not waited out)
        proxy = ServiceProxy("volume", "127.0.0.1", port_a, signer=Signer(KEY.encode()))
        version = json.loads(proxy.post(b'{"cmd": "changes", "args": {"since": 0}}').body)["result"]["version"]
        outcome: list[object] = []
        poll = threading.Thread(target=lambda: outcome.append(long_poll(proxy, version)))
        poll.start()
        wait_for(lambda: proxy._busy, 5, what="the long poll to be in flight")  # noqa: SLF001
        started = time.monotonic()
        assert proxy.retarget("127.0.0.1", port_b)
        poll.join(5)
        assert not poll.is_alive() and time.monotonic() - started < 1.0, outcome
        # cut in flight (502), or, when the cut came before the request left, sent once more to B, which
        # answers a version of A's with a reset: either way the poll was not waited out
        cut = outcome[0]
        assert (isinstance(cut, ForwardError) and cut.status == 502) or \
            (not isinstance(cut, ForwardError) and json.loads(cut.body)["result"].get("reset")), outcome
        assert json.loads(proxy.post(b'{"cmd": "status"}').body)["result"]["pid"] == pid_b
        proxy.close()
    finally:
        stack.stop()
        stop_all(procs)
        etcd.delete(prefix, prefix=True)
        etcd.close()
