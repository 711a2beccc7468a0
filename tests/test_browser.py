"""js/shmooze.js and the jukebox demo page in a real (headless) Chromium, against real services.

The queue, pool and volume services and the gateway run as gunicorn daemons (as in
test_live.py); Playwright drives Debian's Chromium. Skipped where Chromium or the
Playwright package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: F401 - for the browser tests
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("the playwright Python package is not installed", allow_module_level=True)

CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
if not CHROMIUM:  # pragma: no cover - depends on the machine
    pytest.skip("no Chromium (/usr/bin/chromium or chromium on PATH) to drive", allow_module_level=True)

from shmooze.client import Client, ShmoozeError  # noqa: E402
from tests.helpers import ROOT, Stack, descendants, gone, start_service, wait_for  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TEST_PAGE = Path(__file__).resolve().parent / "browser_static" / "plain.html"
TIMEOUT_MS = 10_000  # for every wait on the page

pytestmark = pytest.mark.timeout(90)


# -- fixtures: conftest.py's ``jukebox``, ``browser`` and ``page`` (for every browser test module) ---------

def jukebox_stack(tmp_path_factory):
    """The demo's three services and the gateway; ``procs["wsgi"]`` may be replaced by a test."""
    tmp = tmp_path_factory.mktemp("browser")
    with Stack(tmp, {"queue": "jukebox.app:make_queue", "pool": "jukebox.app:make_pool",
                     "volume": "jukebox.volume:Volume"},
               public=["ports", "wsgi_prefix", "app_name"], app_name="test jukebox",
               static_path=str(ROOT / "examples" / "jukebox" / "static"), log_database_path=str(tmp / "log.db"),
               # An idle service holds the gateway's 20 s long poll open; don't wait all of it when stopping.
               stop_timeout=3) as stack:
        yield {"path": stack.path, "tmp": tmp, "ports": stack.ports, "url": stack.url, "procs": stack.procs,
               "client": Client(stack.url)}


def headless_chromium():
    """One headless Chromium (fresh temporary profile) for the module; its processes are checked gone."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    pw = sync_playwright().start()
    started: set[int] = set()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            started = {p.pid for p in me.children(recursive=True)} - before
            assert any("chromium" in _cmdline(pid) for pid in started), "Chromium was not started"
            yield chromium
        finally:
            started |= {kid for pid in list(started) for kid in descendants(pid)}  # renderers started since
            chromium.close()
    finally:
        pw.stop()
        wait_for(lambda: all(gone(pid) for pid in started), 15, what="Chromium and the Playwright driver to end")


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return ""


class PageNet:
    """One page's HTTP requests and WebSocket frames, as they happen."""

    def __init__(self, page):
        self.requests = []  # (method, url, post body)
        self.sockets = []  # WebSocket URLs opened
        self.sent = []  # WebSocket frames sent, parsed
        self.received = []  # WebSocket frames received, parsed
        page.on("request", lambda r: self.requests.append((r.method, r.url, r.post_data)))
        page.on("websocket", self._on_socket)

    def _on_socket(self, ws):
        self.sockets.append(ws.url)
        ws.on("framesent", lambda payload: self.sent.append(_parse(payload)))
        ws.on("framereceived", lambda payload: self.received.append(_parse(payload)))


def _parse(payload):
    try:
        return json.loads(payload)
    except (TypeError, ValueError):
        return payload


def recorded_page(browser, jukebox):
    """A page in its own browser context, recording its traffic in ``page.net``; the queue starts empty."""
    client = jukebox["client"]
    uids = [item["uid"] for item in client.queue.queue()]
    if uids:
        client.queue.rm(uids=uids)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.net = PageNet(pg)
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def open_demo(page, url):
    page.goto(url)
    page.wait_for_function("window.jukeboxReady === true && shmooze.mode === 'websocket' && shmooze.connected")
    page.wait_for_selector("#clock")  # the first answers are in


def open_test_page(page, url, **options):
    """The bare page with shmooze.js, served at the gateway's origin, connected with ``options``."""
    page.route(url + "plain.html", lambda route: route.fulfill(path=str(TEST_PAGE), content_type="text/html"))
    page.goto(url + "plain.html")
    page.evaluate("options => shmooze.connect(options).then(() => true)", options)


def add_countdown(client, seconds=30, label="countdown"):
    return client.queue.add(type="countdown", args={"seconds": seconds, "label": label})["uid"]


WATCH_REMAINING = """() => {
    window.seenRemaining = [];
    const body = document.getElementById("now-body");
    const note = () => {
        const node = document.getElementById("now-remaining");
        const text = node && node.textContent;
        if (text && window.seenRemaining[window.seenRemaining.length - 1] !== text) window.seenRemaining.push(text);
    };
    new MutationObserver(note).observe(body, {childList: true, subtree: true, characterData: true});
    note();
}"""


def wait_for_remaining_changes(page, count):
    page.wait_for_function(f"window.seenRemaining.length >= {count}")
    return page.evaluate("window.seenRemaining")


# -- the tests -----------------------------------------------------------------------------

def test_page_loads_settings_and_endpoints(page, jukebox):
    open_demo(page, jukebox["url"])
    assert sorted(page.evaluate("Object.keys(endpoints)")) == ["pool", "queue", "volume"]
    assert page.evaluate("settings_data.app_name") == "test jukebox"
    assert page.evaluate("settings_data.ports") == jukebox["ports"]
    assert page.inner_text("#app-name") == "test jukebox" and page.title() == "test jukebox"
    assert page.is_visible("#online") and not page.is_visible("#lost") and not page.is_visible("#offline")
    types = page.eval_on_selector_all("#add-type option", "opts => opts.map(o => o.value)")
    assert sorted(types) == ["banner", "countdown", "shout", "text"]
    assert page.input_value("#add-type") == "text"
    level = jukebox["client"].volume.get_volume()["level"]
    page.wait_for_function(f"document.getElementById('volume-level').textContent === '{level}%'")
    assert page.input_value("#volume") == str(level)
    assert page.wait_for_selector("#clock").inner_text().count(":") == 2


def test_add_from_the_page(page, jukebox):
    open_demo(page, jukebox["url"])
    text = "one two three four five six seven eight nine ten eleven twelve"
    page.fill("#add-text", text)
    page.click("#add-button")
    item = page.wait_for_selector("#now-body[data-uid]")  # playing at once: "Now playing", not "Up next"
    uid = item.get_attribute("data-uid")
    assert item.query_selector(".tag").inner_text() == "text"
    page.wait_for_function("document.querySelector('#now-body .title') && "
                           f"document.querySelector('#now-body .title').textContent === {json.dumps(text)}")
    assert page.get_attribute("#now-body", "data-uid") == uid
    assert page.input_value("#add-text") == ""  # the form is cleared once the add succeeded
    queued = jukebox["client"].queue.queue()
    assert [(q["uid"], q["type"]) for q in queued] == [(uid, "text")]
    # The queue's own parameter events move the spoken words along on the page.
    page.wait_for_function("document.getElementById('now-spoken').textContent.indexOf('one two') >= 0")
    # Commands from the page go over the WebSocket, not HTTP.
    add = [m for m in page.net.sent if isinstance(m, dict) and m.get("service") == "queue"
           and any(c.get("cmd") == "add" for c in m.get("batch", [m]))]
    sent = dict(add[0]["batch"][0]["args"]) if len(add) == 1 else {}
    assert sent.pop("key", "") and sent == {"type": "text", "args": {"text": text}}  # with a client key


def test_parameter_changes_are_pushed_without_polling(page, jukebox):
    open_demo(page, jukebox["url"])
    page.evaluate(WATCH_REMAINING)
    start_requests = len(page.net.requests)
    start_sockets = len(page.net.sockets)
    start_received = len(page.net.received)
    url = page.url
    add_countdown(jukebox["client"], 30, "launch")
    seen = wait_for_remaining_changes(page, 5)
    assert len(set(seen)) >= 5 and all(s.endswith(" s") for s in seen)
    values = [float(s.split()[0]) for s in seen]
    assert values == sorted(values, reverse=True) and values[0] <= 30.0
    assert page.inner_text("#now-body .title") == "launch"
    assert page.url == url  # no reload
    assert page.net.requests[start_requests:] == [], "the page made HTTP requests while the WebSocket was up"
    assert len(page.net.sockets) == start_sockets  # and no new WebSocket either
    assert page.evaluate("shmooze.mode") == "websocket"
    pushed = [m for m in page.net.received[start_received:] if isinstance(m, dict) and m.get("event") == "change"
              and any("remaining" in (e.get("set") or {}) for e in m.get("events", []))]
    assert len(pushed) >= 4


def test_an_update_that_overtakes_a_reload_is_kept(page, jukebox):
    """Pushes can overtake a reload's answer: the demo once lost a banner's "showing" state set right
    after its "added" event asked for a reload, when the answer came from before the update, and then
    showed its text instead of its frames (the reload's answer replaced what the update had set). Here
    the page's queue answer is held and made older than the update that comes meanwhile."""
    open_demo(page, jukebox["url"])
    page.evaluate("""() => {
        const ep = shmooze.endpoints.queue, send = ep.deferQuery.bind(ep);
        window.heldAnswers = [];
        ep.deferQuery = function (data, onResult, onError) {
            if (data.cmd !== "queue") return send(data, onResult, onError);
            return send(data, r => window.heldAnswers.push(() => onResult(
                [{uid: "overtaken", type: "banner", parameters: {text: "older answer"}}])), onError);
        };
        const version = shmooze.endpoints.queue.version;
        shmooze.endpoints.queue._deliver({event: "change", service: "queue", version: version + 1,
            events: [{version: version + 1, kind: "added", uid: "overtaken", type: "banner"}]});
    }""")
    page.wait_for_function("window.heldAnswers.length === 1")  # the reload's answer came and is held
    page.evaluate("""() => {
        const version = shmooze.endpoints.queue.version;
        shmooze.endpoints.queue._deliver({event: "change", service: "queue", version: version + 1,
            events: [{version: version + 1, kind: "parameters", uid: "overtaken",
                      set: {state: "showing", shown: "newer frame"}}]});
        window.heldAnswers.forEach(answer => answer());
    }""")
    assert page.inner_text("#now-body .title") == "[newer frame]"
    page.evaluate("jukebox.model.queue = []; jukebox.render()")  # (the made-up item goes)


def test_deferred_queries_are_batched_over_the_websocket(page, jukebox):
    open_demo(page, jukebox["url"])
    start_requests = len(page.net.requests)
    start_sent = len(page.net.sent)
    levels = page.evaluate("""() => {
        const before = shmooze.stats.wsMessagesSent;
        const all = [10, 20, 30].map(level => endpoints.volume.deferQuery({cmd: "set_volume", args: {level}}));
        if (shmooze.stats.wsMessagesSent !== before) throw new Error("deferQuery sent at once");
        return Promise.all(all).then(results => results.map(r => r.level));
    }""")
    assert levels == [10, 20, 30]
    mine = [m for m in page.net.sent[start_sent:] if isinstance(m, dict) and "set_volume" in json.dumps(m)]
    assert mine == [{"id": mine[0]["id"], "service": "volume",
                     "batch": [{"cmd": "set_volume", "args": {"level": lv}} for lv in (10, 20, 30)]}]
    assert page.net.requests[start_requests:] == []
    # The volume's change event makes the page read it again.
    page.wait_for_function("document.getElementById('volume-level').textContent === '30%'")


def test_deferred_queries_are_batched_over_http_without_websocket(page, jukebox):
    open_test_page(page, jukebox["url"], websocket=False)
    assert page.evaluate("shmooze.mode") == "polling"
    start = len(page.net.requests)
    answers = page.evaluate("""() => {
        const before = shmooze.stats.httpRequests;
        const all = [endpoints.volume.deferQuery({cmd: "set_volume", args: {level: 40}}),
                     endpoints.volume.deferQuery({cmd: "set_volume", args: {level: 101}}),
                     endpoints.volume.deferQuery({cmd: "get_volume"})];
        if (shmooze.stats.httpRequests !== before) throw new Error("deferQuery sent at once");
        return Promise.allSettled(all).then(rs => rs.map(r => r.status === "fulfilled" ? r.value : "error: " + r.reason.message));
    }""")
    assert answers[0] == {"level": 40, "muted": False} and answers[2] == {"level": 40, "muted": False}
    assert answers[1].startswith("error: ") and "from 0 to 100" in answers[1]
    posts = [r for r in page.net.requests[start:] if r[0] == "POST"]
    assert len(posts) == 1
    method, url, body = posts[0]
    assert url == jukebox["url"] + "volume"
    assert json.loads(body) == [{"cmd": "set_volume", "args": {"level": 40}},
                                {"cmd": "set_volume", "args": {"level": 101}}, {"cmd": "get_volume"}]
    assert page.net.sockets == []


def test_polling_fallback_delivers_changes(page, jukebox):
    open_test_page(page, jukebox["url"], websocket=False, pollTimeout=5)
    page.evaluate("""() => {
        window.changes = [];
        endpoints.queue.on("change", event => window.changes.push(event));
    }""")
    page.wait_for_function("endpoints.queue.version !== null && shmooze.connected === true")
    assert page.is_visible("#up") and not page.is_visible("#down")
    uid = add_countdown(jukebox["client"], 20, "polled")
    page.wait_for_function(f"""window.changes.filter(c => c.events.some(e =>
        e.uid === {json.dumps(uid)} && e.set && typeof e.set.remaining === "number")).length >= 3""")
    changes = page.evaluate("window.changes")
    assert all(c["service"] == "queue" for c in changes)
    versions = [c["version"] for c in changes]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert any(e.get("kind") != "parameters" and e.get("uid") == uid for c in changes for e in c["events"])
    assert page.evaluate("shmooze.mode") == "polling"
    assert page.net.sockets == [] and page.evaluate("shmooze.stats.wsMessagesSent") == 0
    polls = [json.loads(body) for method, url, body in page.net.requests
             if method == "POST" and url == jukebox["url"] + "queue"]
    assert len(polls) >= 3 and all(p["cmd"] == "changes" for p in polls)
    assert any(p["args"]["timeout"] == 5 for p in polls)


# Where no WebSocket can be opened (a proxy that refuses upgrades): every attempt closes before it opens.
# The retry that shmooze.js makes every 30 s while it polls is shortened to 300 ms here.
NO_WEBSOCKET = """
    window.wsAttempts = 0;
    window.WebSocket = function (url) {
        window.wsAttempts++;
        const sock = this;
        sock.url = url;
        sock.readyState = 0;
        setTimeout(() => {
            sock.readyState = 3;
            if (sock.onerror) sock.onerror({type: "error"});
            if (sock.onclose) sock.onclose({type: "close", code: 1006, wasClean: false});
        }, 10);
    };
    window.WebSocket.prototype.send = function () { throw new Error("not open"); };
    window.WebSocket.prototype.close = function () {};
    const realSetTimeout = window.setTimeout;
    window.setTimeout = function (fn, ms, ...rest) { return realSetTimeout(fn, ms >= 30000 ? 300 : ms, ...rest); };
"""


def test_falls_back_to_polling_when_websocket_fails(page, jukebox):
    page.add_init_script(NO_WEBSOCKET)
    open_test_page(page, jukebox["url"])
    page.evaluate("""() => {
        window.changes = [];
        window.disconnects = 0;
        shmooze.on("disconnect", () => window.disconnects++);
        endpoints.queue.on("change", event => window.changes.push(event));
    }""")
    # Three failed opens (after backoffs of about 0.25, 0.5 and 1 s), then long polling.
    page.wait_for_function("shmooze.mode === 'polling' && shmooze.connected === true && endpoints.queue.version !== null")
    assert page.evaluate("window.wsAttempts") >= 3
    assert page.is_visible("#up") and page.is_hidden("#down")
    failures = page.evaluate("window.disconnects")
    # Later tries of the WebSocket fail too; polling still works, so the page stays connected.
    attempts = page.evaluate("window.wsAttempts")
    page.wait_for_function(f"window.wsAttempts >= {attempts + 3}")
    assert page.evaluate("[window.disconnects, shmooze.connected]") == [failures, True]
    assert page.is_visible("#up") and page.is_hidden("#down")
    uid = add_countdown(jukebox["client"], 20, "fallback")
    page.wait_for_function(f"""window.changes.filter(c => c.events.some(e =>
        e.uid === {json.dumps(uid)} && e.set && typeof e.set.remaining === "number")).length >= 3""")
    assert page.evaluate("[shmooze.mode, window.disconnects, shmooze.stats.wsMessagesSent]") == ["polling", failures, 0]
    assert page.net.sockets == []  # the stub never reached the network


def test_gateway_restart_shows_disconnect_and_resumes(page, jukebox):
    open_demo(page, jukebox["url"])
    assert page.is_visible("#online") and not page.is_visible("#lost")
    procs = jukebox["procs"]
    old = procs["wsgi"]
    old.stop()
    assert gone(old.pid)
    page.wait_for_selector("#lost", state="visible")
    assert page.is_visible("#offline") and page.is_hidden("#online")
    assert page.evaluate("shmooze.connected") is False
    procs["wsgi"] = start_service(jukebox["path"], "wsgi", Path(tempfile.mkdtemp(dir=jukebox["tmp"])))
    page.wait_for_selector("#online", state="visible")
    assert page.is_hidden("#lost") and page.is_hidden("#offline")
    page.evaluate(WATCH_REMAINING)
    add_countdown(jukebox["client"], 30, "after restart")
    page.wait_for_function("document.querySelector('#now-body .title') && "
                           "document.querySelector('#now-body .title').textContent === 'after restart'")
    seen = wait_for_remaining_changes(page, 3)
    assert len(set(seen)) >= 3
    assert page.evaluate("shmooze.stats.reconnects") >= 1


def _status(client):
    """The queue's status, or None while it is restarting."""
    try:
        return client.queue.status()
    except ShmoozeError:
        return None


#: The queue as the page shows it: the module playing ("Now playing"), then "Up next".
QUEUED_UIDS = ("[document.getElementById('now-body').dataset.uid, ...Array.from("
               "document.querySelectorAll('#queue li[data-uid]')).map(li => li.dataset.uid)].join()")


def test_restored_queue_shows_without_a_reload(page, jukebox):
    """SIGKILL of the queue's worker: the open page shows the restored queue by itself (issue 12)."""
    client = jukebox["client"]
    open_demo(page, jukebox["url"])
    uids = [add_countdown(client, 120, f"kept {i}") for i in range(3)]
    client.queue.mv(uids=[uids[2]])
    uids = [uids[2], uids[0], uids[1]]
    page.wait_for_function(f"{QUEUED_UIDS} === {json.dumps(','.join(uids))}")
    page.evaluate("window.notReloaded = true")
    bg = client.queue.bg()["uid"]
    assert page.get_attribute("#bg", "data-uid") == bg
    old = wait_for(lambda: (s := client.queue.status()) and s["journal"]["pending"] == 0 and s, 10)

    os.kill(old["pid"], signal.SIGKILL)

    new = wait_for(lambda: (s := _status(client)) and s["pid"] != old["pid"] and not s["restoring"] and s, 60,
                   interval=0.2, what="the queue's new worker to restore")
    assert new["epoch"] > old["change_version"]  # every version of the new instance is above the old ones
    assert [q["uid"] for q in client.queue.queue()] == uids and client.queue.bg()["uid"] == bg
    page.wait_for_function(f"endpoints.queue.version >= {new['epoch']}")
    page.wait_for_function(f"{QUEUED_UIDS} === {json.dumps(','.join(uids))} && "
                           f"document.getElementById('bg').dataset.uid === {json.dumps(bg)}")
    page.wait_for_function("document.querySelector('#now-body .title') && "
                           "document.querySelector('#now-body .title').textContent === 'kept 2'")
    assert page.evaluate("window.notReloaded") is True  # the same page: no navigation, no manual reload
    client.queue.rm(uids=uids)


def test_polling_page_is_told_to_reset_after_a_restart(page, jukebox):
    """Without the WebSocket too: the first long poll after the queue restarted answers reset."""
    client = jukebox["client"]
    open_test_page(page, jukebox["url"], websocket=False, pollTimeout=5)
    page.evaluate("""() => {
        window.changes = [];
        endpoints.queue.on("change", event => window.changes.push(event));
    }""")
    page.wait_for_function("endpoints.queue.version !== null && shmooze.connected === true")
    uid = add_countdown(client, 120, "polled")
    page.wait_for_function(f"window.changes.some(c => c.events.some(e => e.uid === {json.dumps(uid)}))")
    old = client.queue.status()
    wait_for(lambda: client.queue.status()["journal"]["pending"] == 0, 10)
    os.kill(old["pid"], signal.SIGKILL)
    page.wait_for_function("window.changes.some(c => c.reset === true)", timeout=60_000)
    reset = next(c for c in page.evaluate("window.changes") if c.get("reset"))
    assert reset["version"] > old["change_version"]
    wait_for(lambda: (s := _status(client)) and s["pid"] != old["pid"] and not s["restoring"] and s, 60)
    assert [q["uid"] for q in client.queue.queue()] == [uid]
    client.queue.rm(uids=[uid])


def test_screenshot_with_items_queued(page, jukebox):
    """The page with a few items queued lays out without overflow; SHMOOZE_SCREENSHOT=PATH keeps a picture."""
    client = jukebox["client"]
    add_countdown(client, 90, "tea is ready")
    client.queue.add(type="text", args={"text": "the quick brown fox jumps over the lazy dog " * 3})
    client.queue.add(type="shout", args={"text": "hello from bash"})
    client.pool.add(type="blinker", args={"color": "royalblue"})
    open_demo(page, jukebox["url"])
    page.wait_for_function("document.querySelectorAll('#queue li[data-uid]').length === 2")
    page.wait_for_selector("#lights li[data-uid]")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.inner_text("#now-body .title") == "tea is ready"
    labels = page.eval_on_selector_all("#queue li .label", "ls => ls.map(l => l.textContent)")
    assert labels[0].startswith("the quick") and all(labels), labels
    # The queue's labels have room to be read (they were cut to a few letters in a one-column card).
    assert page.eval_on_selector("#queue li .label", "l => l.clientWidth >= 0.5 * l.parentNode.clientWidth"), labels[0]
    page.set_viewport_size({"width": 600, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.set_viewport_size({"width": 1100, "height": 900})
    target = os.environ.get("SHMOOZE_SCREENSHOT")
    if target:
        page.screenshot(path=target, full_page=True)
    for light in client.pool.pool():
        client.pool.rm(uids=[light["uid"]])


def test_usable_as_an_es_module(page, jukebox):
    """``import shmooze from "/static/shmooze.mjs"`` gives the same library as the plain script."""
    url = jukebox["url"]
    module_page = TEST_PAGE.with_name("module.html")
    page.route(url + "module.html", lambda route: route.fulfill(path=str(module_page), content_type="text/html"))
    page.goto(url + "module.html")
    page.wait_for_function("window.moduleResult !== undefined")
    result = page.evaluate("window.moduleResult")
    assert result["sameObject"] is True
    assert {"queue", "pool", "volume"} <= set(result["services"])
