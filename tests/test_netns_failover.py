"""Past one machine without a single point of failure, on simulated hosts (shmooze/testing/netns.py):
three etcd members on hosts of their own, the queue on two candidate hosts (q1, q2), two gateways
behind HAProxy, Chromium on a browser host. Every host runs the real thing (``shmooze run --services``
with its own settings file, Debian's etcd and HAProxy).

One scenario, in steps that build on each other:

1. the leader stopped on its host: the other candidate serves, and the gateways follow its
   registration within 1 s (measured from the registration's change, seen through etcd's watch);
2. the leader host's link goes down: the standby serves within the lease time plus the restore
   (goal 10 s from link down to every restored module running), with the same uids, order and
   background; the page carries on without a reload; at no moment do both hosts run the same
   module (every module process, sampled every 100 ms on both); the link back, the old leader has
   stopped its modules and stands by;
3. every process of the leader host SIGKILLed: the same;
4. one etcd member lost: nothing changes; two lost: reads answered, changes refused with a 503 that
   says "no quorum", nothing restarts; quorum back: all resumes.

The test's own probe (gateways asked directly every 20 ms, etcd watched) runs in threads moved into
the browser host's namespace (``setns`` applies to the calling thread and the threads it starts).
Skipped, with the reason, when not root, without ``ip netns``, etcd, HAProxy, Chromium or Playwright.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from shmooze.cluster.directory import Directory
from shmooze.cluster.etcd import Etcd
from shmooze.cluster.keys import Registration
from shmooze.testing import etcd as etcd_kit
from shmooze.testing import netns
from tests.helpers import PYTHON, Proc, gone, stop_all, wait_for, write_settings
from tests.test_netns import HAPROXY, PORT, SERVICE_KEY, TEST_PAGE, TOKEN, chromium_in, command, haproxy_conf

if etcd_kit.why_not():  # pragma: no cover - depends on the machine
    pytest.skip(str(etcd_kit.why_not()), allow_module_level=True)

pytestmark = pytest.mark.timeout(480)
log = logging.getLogger(__name__)

HOSTS = {"lb": 10, "gw1": 11, "gw2": 12, "q1": 21, "q2": 23, "browser": 30, "e1": 31, "e2": 32, "e3": 33}
CANDIDATES = ("q1", "q2")
QUEUE_PORT = 8081
LEASE_TTL = 5  # the default
GOAL = 10.0  # seconds from link down to every restored module running


def host_settings(tmp: Path, hosts: netns.Hosts, etcd: etcd_kit.EtcdCluster, host: str) -> Path:
    """The same application on every host (a candidate finds its own address among its interfaces)."""
    a = hosts.addresses
    return write_settings(
        tmp / f"{host}.json", ports={"wsgi": PORT, "queue": QUEUE_PORT}, hosts={"queue": [a[c] for c in CANDIDATES]},
        etcd=etcd.endpoints, host="0.0.0.0", access_token=TOKEN, service_key=SERVICE_KEY, connect_timeout=1.0,
        forward_timeout=20, services={"queue": "jukebox.app:make_queue"}, public=["ports", "wsgi_prefix"],
        static_path=str(tmp / "static"), run_path=str(tmp / f"run-{host}"), journal_path=str(tmp / f"journal-{host}"),
        stop_timeout=3, start_timeout=120, gateway_workers=1, etcd_lease_ttl=LEASE_TTL)


class Modules:
    """Every module process on the candidate hosts, sampled every 100 ms: which uids run where (a module
    process is one with ``SHMOOZE_MODULE_UID`` in its environment, on a host by its network namespace)."""

    def __init__(self, hosts: netns.Hosts):
        self.hosts = hosts
        self.samples: list[tuple[float, dict[str, set[str]]]] = []
        self.both: list[tuple[float, set[str]]] = []  # samples where one uid ran on both hosts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="module sampler", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, set[str]]:
        return self.hosts.module_uids(CANDIDATES)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now, found = time.monotonic(), self.sample()
            self.samples.append((now, found))
            if found["q1"] & found["q2"]:
                self.both.append((now, found["q1"] & found["q2"]))

    def now(self) -> dict[str, set[str]]:
        return self.samples[-1][1] if self.samples else self.sample()

    def first_time(self, since: float, host: str, uids: set[str]) -> float | None:
        """When ``uids`` were first all running on ``host`` after ``since``."""
        return next((t for t, found in self.samples if t >= since and uids <= found[host]), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Probe:
    """The test's eyes on the browser host: every gateway asked ``status`` directly every 20 ms (which
    process answered, by its pid), and the queue's registration followed through etcd."""

    def __init__(self, hosts: netns.Hosts, etcd: etcd_kit.EtcdCluster):
        self.addresses = {g: hosts.addresses[g] for g in ("gw1", "gw2")}
        self.answers: list[tuple[float, str, int | str]] = []  # (time, gateway, pid or error)
        self.registrations: list[tuple[float, Registration | None]] = []
        self._stop = threading.Event()
        self.pool = ThreadPoolExecutor(4, initializer=netns.enter, initargs=(hosts.ns("browser"),))
        self.directory = self.pool.submit(self._follow, etcd.endpoints).result(30)
        self.pool.submit(self._poll)

    def _follow(self, endpoints: list[str]) -> Directory:
        directory = Directory(Etcd(endpoints), "/shmooze/services/")
        directory.subscribe(lambda name, found: self.registrations.append((time.monotonic(), found)))
        return directory.start(wait=10)

    def ask(self, gateway: str, body: Any, token: bool = False, timeout: float = 3.0) -> tuple[int, Any]:
        """One command to a gateway, from the browser host: (HTTP status, answer), (0, error) without one."""
        return self.pool.submit(self._ask, gateway, body, token, timeout).result(timeout + 5)

    def _ask(self, gateway: str, body: Any, token: bool, timeout: float) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.addresses[gateway], PORT, timeout=timeout)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {TOKEN}"} if token else {})}
        try:
            conn.request("POST", "/queue", json.dumps(body), headers)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        except (OSError, ValueError) as exc:
            return 0, str(exc)
        finally:
            conn.close()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            for gateway in self.addresses:
                status, answer = self._ask(gateway, {"cmd": "status"}, False, 1.0)
                self.answers.append((time.monotonic(), gateway, answer["result"]["pid"] if status == 200 else
                                     f"{status} {answer.get('error') if isinstance(answer, dict) else answer}"))

    def leader(self) -> Registration | None:
        return self.directory.registration("queue")

    def followed(self, since: float, pid: int) -> float | None:
        """When both gateways answered from ``pid`` (after ``since``) and never from another after."""
        times = []
        for gateway in self.addresses:
            mine = [(t, who) for t, g, who in self.answers if g == gateway and t >= since]
            last_other = max((t for t, who in mine if who != pid), default=since)
            first = next((t for t, who in mine if who == pid and t >= last_other), None)
            if first is None:
                return None
            times.append(first)
        return max(times)

    def first_answer(self, since: float, pid: int) -> float | None:
        return next((t for t, _, who in self.answers if t >= since and who == pid), None)

    def close(self) -> None:
        self._stop.set()
        self.pool.submit(self.directory.close)
        self.pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netns-failover")
    hosts = netns.Hosts(HOSTS)
    (tmp / "static").mkdir()
    (tmp / "static" / "index.html").write_text(TEST_PAGE.read_text())
    procs: dict[str, Proc] = {}
    retired: list[Proc] = []  # runs a step replaced (stopped or killed)
    etcd: etcd_kit.EtcdCluster | None = None
    probe = modules = None
    try:
        hosts.create()
        etcd = etcd_kit.EtcdCluster(3, hosts=hosts, on=["e1", "e2", "e3"])
        etcd.start()

        def run(host: str, services: str) -> Proc:
            path = host_settings(tmp, hosts, etcd, host)
            return Proc(hosts.argv(host, [PYTHON, "-m", "shmooze", "run", str(path), "--services", services]),
                        log_path=tmp / f"{host}.log")

        for host, services in (("q1", "queue"), ("gw1", "gateway"), ("gw2", "gateway")):
            procs[host] = run(host, services)
        conf = tmp / "haproxy.cfg"
        conf.write_text(haproxy_conf(hosts))
        procs["lb"] = Proc(hosts.argv("lb", [str(HAPROXY), "-db", "-f", str(conf)]), log_path=tmp / "lb.log")
        for host in ("q1", "gw1", "gw2"):
            wait_running(procs[host], host)
        probe = Probe(hosts, etcd)
        q1 = f"http://{hosts.addresses['q1']}:{QUEUE_PORT}"
        wait_for(lambda: probe.directory.url("queue") == q1, 60, interval=0.1, what="q1 to lead")
        procs["q2"] = run("q2", "queue")  # after q1 leads: it stands by
        wait_running(procs["q2"], "q2")
        modules = Modules(hosts)
        yield {"hosts": hosts, "tmp": tmp, "procs": procs, "etcd": etcd, "probe": probe, "modules": modules,
               "run": run, "url": f"http://{hosts.addresses['lb']}:{PORT}/", "retired": retired}
    finally:
        if modules is not None:
            modules.stop()
        if probe is not None:
            probe.close()
        ordered = [procs[host] for host in ("lb", "gw1", "gw2", "q1", "q2") if host in procs] + retired
        failure: BaseException | None = None
        try:
            stop_all(ordered)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the hosts are gone
            failure = exc
        if etcd is not None:
            etcd.stop()
        pids = [pid for proc in ordered for pid in (proc.pid, *proc.seen)]
        hosts.remove()
        wait_for(lambda: all(gone(pid) for pid in pids), 15, what="the hosts' processes to end")
        if failure is not None:
            raise failure


def wait_running(proc: Proc, host: str) -> None:
    wait_for(lambda: "shmooze: running" in proc.log() or proc.popen.poll() is not None, 150, interval=0.2,
             what=f"{host} to run")
    assert proc.popen.poll() is None, f"{host} did not start:\n{proc.log()}"


@pytest.fixture(scope="module")
def browser(world, tmp_path_factory):
    yield from chromium_in(world["hosts"].ns("browser"), tmp_path_factory.mktemp("chromium"))


WATCH = """() => {
    window.loadedAt = window.loadedAt || Date.now();      // a reload would lose it
    window.changes = [];
    endpoints.queue.on("change", c => window.changes.push(c));
}"""


def open_page(browser, url):
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)
    page.evaluate("token => shmooze.connect({token: token}).then(() => true)", TOKEN)
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected === true")
    page.evaluate(WATCH)
    page.wait_for_function("endpoints.queue.version !== null")
    return page


def host_of(world, registration: Registration | None) -> str | None:
    if registration is None:
        return None
    address = registration.url.split("//", 1)[1].rsplit(":", 1)[0]
    return next(h for h in CANDIDATES if world["hosts"].addresses[h] == address)


def listing(world, gateway: str = "gw1") -> tuple[list[str], str | None]:
    """The queue's uids in order and its background's, asked through a gateway."""
    found = try_listing(world, gateway)
    assert found is not None, "the queue did not answer its listing"
    return found


def try_listing(world, gateway: str = "gw1") -> tuple[list[str], str | None] | None:
    status, answer = world["probe"].ask(gateway, [{"cmd": "queue"}, {"cmd": "bg"}])
    if status != 200 or not all(item.get("success") for item in answer):
        log.info("listing through %s: %s %s", gateway, status, answer)
        return None
    queue, bg = answer[0]["result"], answer[1].get("result")  # (no background: no result)
    return [m["uid"] for m in queue], bg["uid"] if bg else None


def add_through(page, seconds: int = 600) -> str:
    status, answer, _ = command(page, "queue", "add", {"type": "countdown", "args": {"seconds": seconds}})
    assert status == 200 and answer["success"], answer
    return answer["result"]["uid"]


def page_still_serves(page, loaded_at: int) -> None:
    """The page was never reloaded, and a command from it now is answered and its push comes back."""
    uid = wait_for(lambda: try_add(page), 30, interval=0.3, what="a command from the page to be answered")
    page.wait_for_function(f"window.changes.some(c => (c.events || []).some(e => e.uid === {json.dumps(uid)}))")
    assert page.evaluate("[shmooze.connected, window.loadedAt]") == [True, loaded_at]


def try_add(page) -> str | None:
    """A command from the page; None while it is not answered by a gateway (HAProxy's own HTML 503
    while its health checks find no gateway: on a loaded machine a check can time out for a moment)."""
    status, text = page.evaluate("""async ([url, token, body]) => {
        const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json",
                                                              "Authorization": "Bearer " + token}, body});
        return [r.status, await r.text()];
    }""", ["queue", TOKEN, json.dumps({"cmd": "add", "args": {"type": "countdown", "args": {"seconds": 600}}})])
    try:
        answer = json.loads(text)
    except ValueError:
        log.info("add from the page: %s, not JSON: %.200s", status, text)
        return None
    return answer["result"]["uid"] if status == 200 and answer.get("success") else None


def takeover(world, lose: Callable[[], None], what: str, restore: Callable[[], None]) -> dict[str, float]:
    """Lose the leader's host with ``lose``; measure the takeover; ``restore`` brings the host back.
    Returns the seconds from the loss to the first answer of the new leader and to every module running."""
    probe, modules = world["probe"], world["modules"]
    old = probe.leader()
    old_host = host_of(world, old)
    new_host = next(h for h in CANDIDATES if h != old_host)
    uids, bg = listing(world)
    expected = {*uids, bg} - {None}
    wait_for(lambda: expected <= modules.now()[old_host], 20, interval=0.1, what=f"every module running on {old_host}")
    lost_at = time.monotonic()
    lose()
    try:
        wait_for(lambda: host_of(world, probe.leader()) == new_host, LEASE_TTL + 15, interval=0.05,
                 what=f"{new_host} to be elected after {what}")
        new = probe.leader()
        # restored: every module's process on the new host, and the queue as it was (same uids, order and
        # background) answered through both gateways
        for gateway in ("gw1", "gw2"):
            wait_for(lambda gateway=gateway: try_listing(world, gateway) == (uids, bg), GOAL + 20, interval=0.05,
                     what=f"the same queue through {gateway} from {new_host}")
        listed = time.monotonic()
        running = max(listed, wait_for(lambda: modules.first_time(lost_at, new_host, expected), 10, interval=0.1,
                                       what=f"every module restored on {new_host}"))
        answered = wait_for(lambda: probe.first_answer(lost_at, new.pid), 10, interval=0.05,
                            what="a gateway to answer from the new leader")
    finally:
        restore()
    figures = {"first answer": answered - lost_at, "all running": running - lost_at}
    log.info("%s: %s", what, ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
    # the old host, back: its modules stopped, it stands by
    wait_for(lambda: not modules.now()[old_host], 30, interval=0.1, what=f"{old_host}'s modules to be stopped")
    assert not modules.both, f"a module ran on both hosts at once: {modules.both[:3]}"
    assert figures["all running"] < GOAL, f"{what}: every module ran again only after {figures['all running']:.1f} s"
    return figures


def status_on(world, host: str) -> dict[str, Any]:
    """``shmooze status --json`` run on a host."""
    import subprocess

    out = subprocess.run(world["hosts"].argv(host, [PYTHON, "-m", "shmooze", "status", "--json", "--settings",
                                                    str(world["tmp"] / f"{host}.json")]),
                         capture_output=True, text=True, timeout=60)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"services": {}, "output": out.stdout + out.stderr}


def role_on(world, host: str) -> str | None:
    return ((status_on(world, host)["services"].get("queue") or {}).get("status") or {}).get("role")


def test_services_found_and_taken_over_through_etcd(world, browser):
    probe, modules, procs = world["probe"], world["modules"], world["procs"]
    page = open_page(browser, world["url"])
    loaded_at = page.evaluate("window.loadedAt")
    first = [add_through(page) for _ in range(3)]
    assert listing(world)[0] == first
    wait_for(lambda: set(first) <= modules.now()["q1"], 20, interval=0.1, what="the modules on q1")

    # 1. The leader stopped on q1: q2 serves; the gateways follow its registration within 1 s.
    registered = len(probe.registrations)
    stop_all([procs["q1"]])
    world["retired"].append(procs["q1"])
    moved = wait_for(lambda: next((r for t, r in probe.registrations[registered:] if r is not None), None), 30,
                     interval=0.05, what="q2 to register")
    moved_at = next(t for t, r in probe.registrations[registered:] if r is moved)
    assert host_of(world, moved) == "q2"
    followed = wait_for(lambda: probe.followed(moved_at, moved.pid), 10, interval=0.05,
                        what="both gateways to follow the move")
    log.info("gateways followed the move in %.3f s", followed - moved_at)
    assert followed - moved_at < 1.0, f"the gateways took {followed - moved_at:.2f} s to follow"
    wait_for(lambda: set(first) <= modules.now()["q2"], 20, interval=0.1, what="the modules restored on q2")
    # shmooze status on a gateway host says where the queue runs now (its registration), no settings edited
    report = status_on(world, "gw1")["services"]["queue"]
    assert report["state"] == "REMOTE" and report["host"] == world["hosts"].addresses["q2"], report
    procs["q1"] = world["run"]("q1", "queue")
    wait_running(procs["q1"], "q1")
    wait_for(lambda: role_on(world, "q1") == "STANDBY", 30, interval=0.5, what="q1 to stand by")
    page_still_serves(page, loaded_at)

    # 2. The leader host's link goes down.
    hosts = world["hosts"]
    takeover(world, lambda: hosts.link("q2", up=False), "link down", lambda: hosts.link("q2", up=True))
    wait_for(lambda: role_on(world, "q2") == "STANDBY", 30, interval=0.5, what="q2 to stand by again")
    page_still_serves(page, loaded_at)

    # 3. Every process of the leader host (q1 now) SIGKILLed.
    def kill_q1() -> None:
        import signal
        import subprocess

        out = subprocess.run(["ip", "netns", "pids", hosts.ns("q1")], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split() if p.isdigit()]
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # frozen first: all at once, as a host that dies
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def restart_q1() -> None:
        world["retired"].append(procs["q1"])
        procs["q1"] = world["run"]("q1", "queue")

    takeover(world, kill_q1, "every process SIGKILLed", restart_q1)
    wait_running(procs["q1"], "q1")
    page_still_serves(page, loaded_at)

    # 4. etcd members lost: one changes nothing; two leave reads, refuse changes (503, no quorum),
    # and restart nothing; quorum back, all resumes.
    etcd, leader = world["etcd"], probe.leader()
    leader_host = host_of(world, leader)
    running = modules.now()[leader_host]
    etcd.stop_member(0)
    uid = wait_for(lambda: try_add(page), 20, interval=0.3, what="a command with one member lost")
    assert probe.leader() == leader
    etcd.stop_member(1)
    try:
        refused = wait_for(lambda: (lambda s, a: (s, a) if s == 503 else None)(*probe.ask(
            "gw2", {"cmd": "add", "args": {"type": "countdown", "args": {"seconds": 60}}}, token=True)),
            LEASE_TTL + 10, interval=0.3, what="a change refused without quorum")
        assert "no quorum" in refused[1]["error"].lower(), refused
        status, answer = probe.ask("gw1", {"cmd": "queue"})
        assert status == 200 and uid in [m["uid"] for m in answer["result"]], answer
        time.sleep(LEASE_TTL + 1)  # (long enough for a lease to run out: nothing may restart meanwhile)
        assert modules.now()[leader_host] >= running | {uid} and probe.first_answer(time.monotonic() - 1, leader.pid)
    finally:
        etcd.start_member(0)
        etcd.start_member(1)
    etcd.wait_healthy()
    back = wait_for(probe.leader, 30, interval=0.1, what="a leader once the quorum is back")
    if back != leader:
        # Restarted members take connections and answer nothing until they have elected a leader, and
        # while one is silent nothing proves that no lease can expire (shmooze.cluster.leadership): when
        # their restart and election outlast the fencing budget (0.6 x the lease; seen on loaded
        # simulated hosts), the leader fences, failing closed. The hand-over must then be clean: never a
        # module on both hosts (below), the page served. (test_leader asserts that it stays when the
        # members are back in time.)
        log.warning("quorum lost and back: the leader fenced on the way back; %s leads now", back)
    page_still_serves(page, loaded_at)
    assert not modules.both, f"a module ran on both hosts at once: {modules.both[:3]}"
    assert not page.errors, page.errors
