"""A page written against the original shmooze.js API, with js/shmooze-compat.js, in headless Chromium.

The application is laid out as the original framework's were: its static folder served at ``/``
(holding the page as ``index.html``, a ``settings.json`` that links to the real settings, and a
stray ``ws`` file), by a second gateway in front of the demo's services (the fixtures of
tests/test_browser.py).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from shmooze import servicekey
from shmooze.settings import read as read_settings
from tests.helpers import Stack, free_port

ORIGINAL_PAGE = Path(__file__).resolve().parent / "browser_static" / "original.html"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def original_app(jukebox, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("original")
    static = tmp / "static"
    static.mkdir()
    shutil.copy(ORIGINAL_PAGE, static / "index.html")
    (static / "ws").write_text("not the WebSocket")
    # A gateway of its own in front of the jukebox's services, with their service key (as every host of an
    # application shares one).
    key_path = servicekey.key_file(read_settings(jukebox["path"]))
    stack = Stack(tmp, {}, ports={**jukebox["ports"], "wsgi": free_port()}, public=["ports", "app_name"],
                  app_name="old app", api_key="SECRET-KEY", static_prefix="/", static_path=str(static), stop_timeout=3,
                  service_key_path=key_path)
    (static / "settings.json").symlink_to(stack.path)
    with stack:
        yield {"url": stack.url}


def test_a_page_on_the_original_api_works_without_jquery(page, jukebox, original_app):
    url = original_app["url"]
    with urllib.request.urlopen(url + "settings.json", timeout=10) as resp:  # the public keys, not the link
        public = json.loads(resp.read())
    assert sorted(public) == ["app_name", "ports"] and public["app_name"] == "old app"
    page.goto(url)
    # settings.json is loaded by itself and the endpoints made, as the original library did.
    page.wait_for_function("report.ran === 1 && report.added !== null && report.volume !== null")
    report = page.evaluate("report")
    assert sorted(report["types"]) == ["banner", "countdown", "shout", "text"]
    assert report["volume"] == jukebox["client"].volume.get_volume()
    assert page.evaluate("typeof jQuery") == "undefined" and page.evaluate("BASE_URL") == ""
    assert page.evaluate("settings_data") == public
    assert sorted(page.evaluate("Object.keys(endpoints)")) == ["pool", "queue", "volume"]
    assert page.evaluate("new Endpoint('/queue') instanceof shmooze.Endpoint")
    # The add went through, and the page's own rendering of the queue shows it.
    uid = report["added"]
    assert [item["uid"] for item in jukebox["client"].queue.queue()] == [uid]
    item = page.wait_for_selector(f"#queue li[data-uid='{uid}']")
    assert item.inner_text() == "text: from an old page"
    page.wait_for_function("report.alive >= 2")  # onAlive after each batch
    # The gateway's WebSocket, not the static folder's "ws" file: commands go over it.
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected === true")
    assert any(m.get("service") == "queue" for m in page.net.sent if isinstance(m, dict))
    # A service that is not there: the error callback and onDead, and the page keeps working.
    page.wait_for_function("report.errors === 1 && report.dead === 1")
    assert page.evaluate("endpoints.queue.alive") is True
    assert page.is_visible("#up") and page.is_hidden("#down")
    # lostConnection / regainConnection show and hide the marked elements, as the original did.
    page.evaluate("lostConnection()")
    assert page.is_hidden("#up") and page.is_visible("#down")
    page.evaluate("regainConnection()")
    assert page.is_visible("#up") and page.is_hidden("#down")
    jukebox["client"].queue.rm(uids=[uid])
    page.wait_for_function("report.queue && report.queue.length === 0")


def test_the_demo_shows_its_original_api_banner(page, jukebox):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from tests.test_browser import open_demo

    open_demo(page, jukebox["url"])
    # Its thread scrolls the text across once (31 frames, 0.12 s apart, then it leaves the queue): the
    # page follows the frames it pushes. Every text the label shows is kept as it changes, from before
    # the add: the frames that show "port" come 0.5-3 s after it starts, which a loaded machine can
    # spend before the test gets to look (and a poll of the page can miss a frame).
    page.evaluate("""(() => {
        window.seenLabels = [];
        new MutationObserver(() => {
            const label = document.querySelector('#now-body .title');
            if (label) window.seenLabels.push(label.textContent);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    })()""")
    page.select_option("#add-type", "banner")
    page.fill("#add-text", "ported")
    page.click("#add-button")
    item = page.wait_for_selector("#now-body[data-uid]")  # playing at once: "Now playing"
    assert item.query_selector(".tag").inner_text() == "banner"
    uid = item.get_attribute("data-uid")
    try:
        page.wait_for_function("window.seenLabels.some(text => /^\\[ *port/.test(text))")
    except PlaywrightTimeout:
        raise AssertionError(f"the banner's frames did not show; the label showed {page.evaluate('window.seenLabels')!r}, "
                             f"the item is {page.evaluate('document.querySelector(`#now-body`).outerHTML')!r}") from None
    jukebox["client"].queue.rm(uids=[uid])  # (already gone once its pass is over: ignored then)
