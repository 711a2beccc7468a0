"""Past one machine, on simulated hosts: two gateway hosts behind HAProxy, a queue host and a pool
host, and a browser host, each a network namespace the test makes (shmooze/testing/netns.py).

Every host runs the real thing: ``shmooze run --services ...`` with its own settings file,
Debian's HAProxy, headless Chromium. The scenario: pages on either gateway add modules and see
each other's pushes; one gateway host's processes are killed and its page carries on through the
other without a reload, catching up on what it missed; the queue host's link goes down (502
within the connect timeout, the pool keeps working, ``shmooze status`` says it is down) and up
again (everything resumes, the queue's modules still there).

Skipped, with the reason, when not root, without ``ip netns``, HAProxy, Chromium or Playwright.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shmooze.testing import netns
from tests.helpers import PYTHON, ROOT, Proc, gone, stop_all, wait_for, write_settings

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("the playwright Python package is not installed", allow_module_level=True)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAPROXY = shutil.which("haproxy")
_why = netns.why_not() or (None if HAPROXY else "no haproxy (scripts/dev.py test installs Debian's)") or \
    (None if CHROMIUM else "no Chromium to drive")
if _why:  # pragma: no cover - depends on the machine
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.timeout(420)

HOSTS = {"lb": 10, "gw1": 11, "gw2": 12, "queue": 21, "pool": 22, "browser": 30}
PORT = 8080
TOKEN = "netns-test-token"
SERVICE_KEY = "netns-test-service-key-never-in-a-browser"
CONNECT_TIMEOUT = 1.0
TEST_PAGE = ROOT / "tests" / "browser_static" / "plain.html"  # a bare page with shmooze.js
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def haproxy_conf(hosts: netns.Hosts) -> str:
    """What "Past one machine" (docs/past-one-machine.md) recommends, with short check intervals for the test.
    The cookie only lets the test see which gateway a page landed on."""
    a = hosts.addresses
    return f"""global
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout check 3s
    retries 3
    option redispatch
frontend shmooze
    bind {a['lb']}:{PORT}
    default_backend gateways
backend gateways
    balance roundrobin
    cookie GW insert indirect nocache
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 2
    server gw1 {a['gw1']}:{PORT} cookie gw1
    server gw2 {a['gw2']}:{PORT} cookie gw2
"""


def host_settings(tmp, hosts: netns.Hosts, host: str):
    """One settings file per host: the same application, its own run and journal folders."""
    a = hosts.addresses
    return write_settings(
        tmp / f"{host}.json",
        ports={"wsgi": PORT, "queue": 8081, "pool": 8082},
        hosts={"queue": a["queue"], "pool": a["pool"]},
        host="0.0.0.0",  # the gateways listen on their host's address (and loopback)
        access_token=TOKEN, service_key=SERVICE_KEY, connect_timeout=CONNECT_TIMEOUT, forward_timeout=20,
        services={"queue": "jukebox.app:make_queue", "pool": "jukebox.app:make_pool"},
        public=["ports", "wsgi_prefix"], static_path=str(tmp / "static"),
        run_path=str(tmp / f"run-{host}"), journal_path=str(tmp / f"journal-{host}"),
        stop_timeout=3, start_timeout=120, gateway_workers=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netns")
    hosts = netns.Hosts(HOSTS)
    (tmp / "static").mkdir()
    (tmp / "static" / "index.html").write_text(TEST_PAGE.read_text())
    procs: dict[str, Proc] = {}
    try:
        hosts.create()
        for host, services in (("queue", "queue"), ("pool", "pool"), ("gw1", "gateway"), ("gw2", "gateway")):
            path = host_settings(tmp, hosts, host)
            procs[host] = Proc(hosts.argv(host, [PYTHON, "-m", "shmooze", "run", str(path), "--services", services]),
                               log_path=tmp / f"{host}.log")
        conf = tmp / "haproxy.cfg"
        conf.write_text(haproxy_conf(hosts))
        procs["lb"] = Proc(hosts.argv("lb", [HAPROXY, "-db", "-f", str(conf)]), log_path=tmp / "lb.log")
        for host in ("queue", "pool", "gw1", "gw2"):
            wait_for(lambda host=host: "shmooze: running" in procs[host].log() or procs[host].popen.poll() is not None, 150,
                     interval=0.2, what=f"{host} to run")
            assert procs[host].popen.poll() is None, f"{host} did not start:\n{procs[host].log()}"
        yield {"hosts": hosts, "tmp": tmp, "procs": procs, "url": f"http://{hosts.addresses['lb']}:{PORT}/"}
    finally:
        # Gateways before the services they poll; a process that does not stop in time fails the test
        # (after every other one is stopped and the namespaces are removed).
        ordered = [procs[host] for host in ("lb", "gw1", "gw2", "queue", "pool") if host in procs]
        failure: BaseException | None = None
        try:
            stop_all(ordered)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the hosts are gone
            failure = exc
        pids = [pid for proc in ordered for pid in (proc.pid, *proc.seen)]
        hosts.remove()
        wait_for(lambda: all(gone(pid) for pid in pids), 15, what="the hosts' processes to end")
        assert not any(ns.startswith(hosts.tag) for ns in _namespaces()), "a namespace was left behind"
        if failure is not None:
            raise failure


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def chromium_in(namespace: str, folder: Path):
    """Headless Chromium inside a simulated host (a wrapper runs it there; Playwright drives it over
    pipes, which cross namespaces), for a module fixture to yield from."""
    wrapper = folder / "chromium-in-netns"
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def browser(cluster, tmp_path_factory):
    yield from chromium_in(cluster["hosts"].ns("browser"), tmp_path_factory.mktemp("chromium"))


WATCH = """() => {
    window.loadedAt = window.loadedAt || Date.now();      // a reload would lose it
    window.changes = [];
    ["queue", "pool"].forEach(name => endpoints[name].on("change", c => window.changes.push(c)));
}"""


def open_page(browser, url):
    """A page on the load balancer's address; returns it and the gateway it landed on."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)  # served by the gateway (a page from elsewhere may not reach private addresses)
    page.evaluate("token => shmooze.connect({token: token}).then(() => true)", TOKEN)
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected === true")
    page.evaluate(WATCH)
    page.wait_for_function("endpoints.queue.version !== null && endpoints.pool.version !== null")
    gateway = next(c["value"] for c in context.cookies() if c["name"] == "GW")
    return page, gateway


def saw_added(page, service, uid):
    return page.evaluate("""([service, uid]) => window.changes.some(c => c.service === service &&
        (c.events || []).some(e => e.uid === uid))""", [service, uid])


def command(page, service, cmd, args=None):
    """One command through the load balancer with fetch: (HTTP status, answer, seconds)."""
    return page.evaluate("""async ([url, token, body]) => {
        const started = performance.now();
        const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json",
                                                              "Authorization": "Bearer " + token}, body});
        return [r.status, await r.json(), (performance.now() - started) / 1000];
    }""", [service, TOKEN, json.dumps({"cmd": cmd, "args": args or {}})])


def status_from(cluster, host):
    out = subprocess.run(cluster["hosts"].argv(host, [PYTHON, "-m", "shmooze", "status", "--json", "--settings",
                                                      str(cluster["tmp"] / f"{host}.json")]),
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_gateways_behind_haproxy_a_gateway_lost_and_a_host_lost(cluster, browser):
    url = cluster["url"]
    # Pages land on either gateway (the load balancer's cookie says which).
    pages = {}
    for _ in range(6):
        page, gateway = open_page(browser, url)
        if gateway in pages:
            page.context.close()
            continue
        pages[gateway] = page
        if len(pages) == 2:
            break
    assert sorted(pages) == ["gw1", "gw2"], "the load balancer sent every page to one gateway"
    one, two = pages["gw1"], pages["gw2"]

    # Push works whichever gateway a page is on: added through gw1, seen by the page on gw2.
    status, answer, _ = command(one, "queue", "add", {"type": "countdown", "args": {"seconds": 600}})
    assert status == 200 and answer["success"], answer
    first = answer["result"]["uid"]
    two.wait_for_function(f"window.changes.some(c => c.service === 'queue' && "
                          f"(c.events || []).some(e => e.uid === {json.dumps(first)}))")
    status, answer, _ = command(two, "pool", "add", {"type": "blinker"})
    assert status == 200 and answer["success"], answer
    light = answer["result"]["uid"]
    wait_for(lambda: saw_added(one, "pool", light), 20, interval=0.1, what="the pool's push on gw1's page")

    # gw1's host loses every process at once: its page reconnects through the load balancer to gw2
    # and catches up on what it missed, with no reload.
    reconnects = one.evaluate("shmooze.stats.reconnects")
    loaded_at = one.evaluate("window.loadedAt")
    cluster["procs"]["gw1"].kill_everything()
    one.wait_for_function(f"shmooze.stats.reconnects > {reconnects}")
    status, answer, _ = command(two, "queue", "add", {"type": "countdown", "args": {"seconds": 600}})
    assert status == 200 and answer["success"], answer
    missed = answer["result"]["uid"]
    wait_for(lambda: saw_added(one, "queue", missed), 30, interval=0.1, what="gw1's page to catch up through gw2")
    assert one.evaluate("[shmooze.connected, shmooze.mode, window.loadedAt]") == [True, "websocket", loaded_at]

    # The queue host's link goes down: 502 within the connect timeout, the pool keeps working.
    dashboard = two.context.new_page()
    dashboard.goto(url + "_shmooze/")
    dashboard.wait_for_function("window.dashboardReady === true")
    card = "(document.querySelector('[data-service=queue] h3 .muted') || {}).textContent"  # drawn yet?
    dashboard.wait_for_function(f"{card} === 'up'")
    cluster["hosts"].link("queue", up=False)
    try:
        status, answer, took = command(two, "queue", "queue")
        assert status == 502 and answer["success"] is False, answer
        assert took < CONNECT_TIMEOUT * 2 + 2, f"the 502 took {took:.1f} s"
        status, again, took = command(two, "queue", "queue")  # a fresh connection: the connect timeout
        assert status == 502 and took < CONNECT_TIMEOUT + 2, (again, took)
        status, answer, _ = command(two, "pool", "pool")
        assert status == 200 and [m["uid"] for m in answer["result"]] == [light]
        report = status_from(cluster, "gw2")["services"]
        assert report["queue"]["state"] == "REMOTE" and report["queue"]["answering"] is False
        assert report["pool"]["answering"] is True and report["wsgi"]["state"] == "RUNNING"
        dashboard.wait_for_function(f"{card} === 'down'")
    finally:
        cluster["hosts"].link("queue", up=True)

    # Back: commands and pushes resume, the queue still holds its modules.
    def queue_answers():
        status, answer, _ = command(two, "queue", "queue")
        return answer["result"] if status == 200 else None

    queue = wait_for(queue_answers, 30, interval=0.3, what="the queue to answer again")
    assert [m["uid"] for m in queue] == [first, missed]
    status, answer, _ = command(one, "queue", "add", {"type": "countdown", "args": {"seconds": 600}})
    assert status == 200 and answer["success"], answer
    wait_for(lambda: saw_added(two, "queue", answer["result"]["uid"]), 30, interval=0.1,
             what="pushes from the queue again")
    assert all(status_from(cluster, "gw2")["services"][name]["answering"] for name in ("queue", "pool", "wsgi"))
    dashboard.wait_for_function(f"{card} === 'up'")
    assert not one.errors and not two.errors, one.errors + two.errors
    for page in (one, two):
        page.context.close()
