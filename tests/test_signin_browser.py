"""Signing in from a page, in a real headless Chromium, against a real pool and gateway with ``users``
and ``command_access`` (anyone adds, an operator removes): shmooze.js shows its sign-in form when a
command needs it, and the command goes through once signed in (over the WebSocket, reopened with the
session's cookie, which the page's script cannot read); on the dashboard, an operator signs in and
removes a module, which an anonymous page could not. Skipped where Chromium or Playwright is missing."""

from __future__ import annotations

import pytest

try:
    import playwright.sync_api  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("the playwright Python package is not installed", allow_module_level=True)

from tests.test_browser import CHROMIUM, TIMEOUT_MS

if not CHROMIUM:  # pragma: no cover
    pytest.skip("no Chromium", allow_module_level=True)

import requests

from shmooze.gateway.users import hash_password
from tests.helpers import Stack

PASSWORD = "operator's passphrase 7"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signin")
    users = {"ada": {"password_hash": hash_password(PASSWORD), "role": "operator"}}
    # A bare page with shmooze.js, served by the gateway itself (a page from elsewhere may not reach loopback).
    (tmp / "static").mkdir()
    (tmp / "static" / "page.html").write_text('<!doctype html><title>sign-in test</title><script src="shmooze.js"></script>')
    with Stack(tmp, {"pool": "tests.apps:make_ops_pool"}, public=["ports", "wsgi_prefix"], users=users,
               static_path=str(tmp / "static"),
               command_access={"pool": {"add": "anyone"}}, run_path=str(tmp / "run"), stop_timeout=3) as stack:
        yield stack


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.sent = []  # WebSocket frames the page sent
        pg.on("websocket", lambda ws: ws.on("framesent", lambda payload: pg.sent.append(payload)))
        yield pg
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


# Each test names ``browser`` before ``app``: Chromium starts before the stack, so its processes are
# told apart from the stack's when it stops (see tests/test_browser.py headless_chromium).


def sign_in_on(page, user: str, password: str, role: str = "operator") -> None:
    """Fill the sign-in form shmooze.js shows; return once the page names the user and its WebSocket,
    reopened with the session, is connected."""
    page.fill("#shmooze-sign-in [name=user]", user)
    page.fill("#shmooze-sign-in [name=password]", password)
    page.click("#shmooze-sign-in [type=submit]")
    page.wait_for_selector(f"#who:has-text('{user} ({role})')")
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected === true")


def add(app: Stack) -> str:
    answer = requests.post(app.url + "pool", json={"cmd": "add", "args": {"type": "ops"}}, timeout=10).json()
    assert answer["success"], answer  # anyone adds, no token
    return answer["result"]["uid"]


def test_shmooze_js_asks_to_sign_in_and_the_command_then_passes(browser, app, page):
    page.goto(app.url + "static/page.html")
    page.evaluate("base => shmooze.connect({base: base}).then(() => true)", app.url)
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected")
    uid = page.evaluate("() => endpoints.pool.forceQuery({cmd: 'add', args: {type: 'ops'}}).then(r => r.uid)")
    rm = "uid => endpoints.pool.forceQuery({cmd: 'rm', args: {uids: [uid]}}).then(() => 'removed', e => e.needs)"
    assert page.evaluate(rm, uid) == "operator"
    page.wait_for_selector("#shmooze-sign-in", state="visible")
    assert "operator" in page.text_content("#shmooze-sign-in .shmooze-sign-in-why")
    page.fill("#shmooze-sign-in [name=user]", "ada")
    page.fill("#shmooze-sign-in [name=password]", "not the password")
    page.click("#shmooze-sign-in [type=submit]")
    page.wait_for_selector("#shmooze-sign-in .shmooze-sign-in-error:has-text('wrong')")
    page.fill("#shmooze-sign-in [name=password]", PASSWORD)
    page.click("#shmooze-sign-in [type=submit]")
    page.wait_for_selector("#shmooze-sign-in", state="hidden")
    assert page.evaluate("shmooze.user") == {"user": "ada", "role": "operator", "sign_in": True}
    assert "shmooze_session" not in page.evaluate("document.cookie")  # HttpOnly: no script reads it
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected")
    assert page.evaluate(rm, uid) == "removed"
    assert any('"rm"' in frame for frame in page.sent)  # sent over the WebSocket, with the session
    page.evaluate("() => shmooze.signOut()")
    page.wait_for_function("shmooze.mode === 'websocket' && shmooze.connected")
    other = page.evaluate("() => endpoints.pool.forceQuery({cmd: 'add', args: {type: 'ops'}}).then(r => r.uid)")
    assert page.evaluate(rm, other) == "operator"  # signed out: asked again
    requests.post(app.url + "_session", json={"user": "ada", "password": PASSWORD}, timeout=10)


def test_an_operator_signs_in_on_the_dashboard_and_removes_a_module(browser, app, page):
    uid = add(app)
    page.goto(app.url + "_shmooze/")
    page.wait_for_function("window.dashboardReady === true")
    row = f"#modules tr[data-uid='{uid}']"
    page.wait_for_selector(row)
    page.wait_for_selector("#who:has-text('not signed in')")
    assert not page.is_visible("#token-form")  # users sign in; there is no token to ask for
    page.click(f"{row} button[data-rm]")  # anonymous: refused, and the form asks for a sign-in
    page.wait_for_selector("#shmooze-sign-in", state="visible")
    assert page.is_visible(row)
    sign_in_on(page, "ada", PASSWORD)
    page.click(f"{row} button[data-rm]")
    page.wait_for_selector(row, state="detached")
    page.click("#sign-out")
    page.wait_for_selector("#who:has-text('not signed in')")
