"""Who may do what past one machine, on simulated hosts (shmooze/testing/netns.py): two gateway hosts
behind HAProxy, a queue host, a pool host and a browser host, with the campus settings of docs/past-one-machine.md
(``command_access``: anyone adds; ``users``: an operator removes) and ``open_commands: ["add"]``.

The page through HAProxy adds with no token anywhere in it; an anonymous page cannot remove; raw
state-changing commands from the browser host to the services' own ports are refused (the service
key, whatever ``open_commands`` says); an operator signs in on the dashboard and removes a module.

Skipped, with the reason, when not root, without ``ip netns``, HAProxy, Chromium or Playwright.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from shmooze.gateway.users import hash_password
from shmooze.testing import netns
from tests.helpers import PYTHON, ROOT, Proc, gone, stop_all, wait_for, write_settings
from tests.test_netns import HAPROXY, PORT, SERVICE_KEY, TEST_PAGE, chromium_in, haproxy_conf
from tests.test_signin_browser import sign_in_on

try:
    from playwright.sync_api import sync_playwright  # noqa: F401 - (the module is skipped without it)
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("the playwright Python package is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(420)

HOSTS = {"lb": 10, "gw1": 11, "gw2": 12, "queue": 21, "pool": 22, "browser": 30}
PASSWORD = "the operator's campus passphrase"
RAW_ADD = r"""
import sys, urllib.request, urllib.error
body = b'{"cmd": "add", "args": {"type": "countdown", "args": {"seconds": 60}}}'
req = urllib.request.Request(sys.argv[1], data=body, headers={"Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=10)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


@pytest.fixture(scope="module")
def campus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netns-users")
    hosts = netns.Hosts(HOSTS)
    (tmp / "static").mkdir()
    (tmp / "static" / "index.html").write_text(TEST_PAGE.read_text())
    users = {"ada": {"password_hash": hash_password(PASSWORD), "role": "operator"}}
    a = hosts.addresses
    procs: dict[str, Proc] = {}
    try:
        hosts.create()
        for host, services in (("queue", "queue"), ("pool", "pool"), ("gw1", "gateway"), ("gw2", "gateway")):
            path = write_settings(
                tmp / f"{host}.json", ports={"wsgi": PORT, "queue": 8081, "pool": 8082},
                hosts={"queue": a["queue"], "pool": a["pool"]}, host="0.0.0.0", service_key=SERVICE_KEY,
                command_access={"queue": {"add": "anyone"}, "pool": {"add": "anyone"}}, users=users,
                open_commands=["add"], connect_timeout=1.0,
                services={"queue": "jukebox.app:make_queue", "pool": "jukebox.app:make_pool"},
                public=["ports", "wsgi_prefix"], static_path=str(tmp / "static"), run_path=str(tmp / f"run-{host}"),
                journal_path=str(tmp / f"journal-{host}"), stop_timeout=3, start_timeout=120, gateway_workers=1)
            procs[host] = Proc(hosts.argv(host, [PYTHON, "-m", "shmooze", "run", str(path), "--services", services]),
                               log_path=tmp / f"{host}.log")
        conf = tmp / "haproxy.cfg"
        conf.write_text(haproxy_conf(hosts))
        procs["lb"] = Proc(hosts.argv("lb", [str(HAPROXY), "-db", "-f", str(conf)]), log_path=tmp / "lb.log")
        for host in ("queue", "pool", "gw1", "gw2"):
            wait_for(lambda host=host: "shmooze: running" in procs[host].log() or procs[host].popen.poll() is not None,
                     150, interval=0.2, what=f"{host} to run")
            assert procs[host].popen.poll() is None, f"{host} did not start:\n{procs[host].log()}"
        yield {"hosts": hosts, "tmp": tmp, "url": f"http://{a['lb']}:{PORT}/"}
    finally:
        ordered = [procs[host] for host in ("lb", "gw1", "gw2", "queue", "pool") if host in procs]
        failure: BaseException | None = None
        try:
            stop_all(ordered)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the hosts are gone
            failure = exc
        pids = [pid for proc in ordered for pid in (proc.pid, *proc.seen)]
        hosts.remove()
        wait_for(lambda: all(gone(pid) for pid in pids), 15, what="the hosts' processes to end")
        if failure is not None:
            raise failure


@pytest.fixture(scope="module")
def browser(campus, tmp_path_factory):
    yield from chromium_in(campus["hosts"].ns("browser"), tmp_path_factory.mktemp("chromium"))


def raw_add(campus, service: str, port: int) -> tuple[int, dict]:
    """A raw add from the browser host to a service's own port: (status, answer)."""
    address = campus["hosts"].addresses[service]
    out = subprocess.run(campus["hosts"].argv("browser", [PYTHON, "-c", RAW_ADD, f"http://{address}:{port}/"]),
                         capture_output=True, text=True, timeout=60, cwd=ROOT).stdout.strip()
    status, _, body = out.partition(" ")
    return int(status), json.loads(body)


def test_the_campus_page_adds_anonymously_and_an_operator_removes(campus, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(campus["url"])
    page.evaluate("() => shmooze.connect().then(() => true)")  # no token anywhere
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected === true")
    assert "token" not in page.content().lower() and not page.evaluate("shmooze.options.token")
    add = "() => endpoints.queue.forceQuery({cmd: 'add', args: {type: 'countdown', args: {seconds: 60}}}).then(r => r.uid)"
    uid = page.evaluate(add)
    rm = "uid => endpoints.queue.forceQuery({cmd: 'rm', args: {uids: [uid]}}).then(() => 'removed', e => e.needs)"
    assert page.evaluate(rm, uid) == "operator"  # anonymous: refused, asked to sign in
    page.wait_for_selector("#shmooze-sign-in", state="visible")
    # The services' own ports take no state-changing command from the network, open_commands or not.
    for service, port in (("queue", 8081), ("pool", 8082)):
        status, answer = raw_add(campus, service, port)
        assert status == 401 and "service key" in answer["error"], (service, status, answer)

    dash = context.new_page()
    dash.set_default_timeout(20_000)
    dash.on("pageerror", lambda exc: errors.append(str(exc)))
    dash.goto(campus["url"] + "_shmooze/")
    dash.wait_for_function("window.dashboardReady === true")
    row = f"#modules tr[data-uid='{uid}']"
    dash.wait_for_selector(row)
    dash.click("#sign-in")
    sign_in_on(dash, "ada", PASSWORD)
    dash.click(f"{row} button[data-rm]")
    dash.wait_for_selector(row, state="detached")
    assert page.evaluate("() => endpoints.queue.forceQuery({cmd: 'queue'}).then(q => q.map(i => i.uid))") == []
    context.close()
    assert not errors, errors
