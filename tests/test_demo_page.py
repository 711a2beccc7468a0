"""The demo page with a mouse: real presses on rows that change ten times a second, and the small
things a user sees (badges, notices, labels, the add form).

Same services and Chromium as test_browser.py (its fixtures, started again for this module).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import wait_for
from tests.test_browser import PlaywrightTimeout, add_countdown, open_demo

pytestmark = pytest.mark.timeout(120)

PRESS_MS = 150  # how long the mouse button stays down: a person's click, not a synthetic one

COUNT_MUTATIONS = """selector => {
    window.mutations = 0;
    new MutationObserver(records => { window.mutations += records.length; })
        .observe(document.querySelector(selector), {childList: true, subtree: true, characterData: true,
                                                    attributes: true});
}"""


def press(page, selector):
    """Mouse down on the element's middle, hold, mouse up, as a hand does."""
    box = page.locator(selector).bounding_box()
    assert box, f"{selector} is not on the page"
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.wait_for_timeout(PRESS_MS)
    page.mouse.up()


def press_until_gone(page, rows):
    """Press each row's remove button, each once, waiting for the row to go; how many went."""
    gone = 0
    for row in rows:
        press(page, row + " button.rm")
        try:
            page.wait_for_selector(row, state="detached", timeout=5000)
            gone += 1
        except PlaywrightTimeout:  # that press did nothing
            pass
    return gone


def sent_commands(page, start, cmd):
    """Commands named ``cmd`` the page sent over the WebSocket since frame ``start``."""
    out = []
    for message in page.net.sent[start:]:
        if isinstance(message, dict):
            out += [c for c in message.get("batch", [message]) if c.get("cmd") == cmd]
    return out


def clear_pool(client):
    uids = [light["uid"] for light in client.pool.pool()]
    if uids:
        client.pool.rm(uids=uids)


def test_every_press_on_a_counting_row_acts(page, jukebox):
    client = jukebox["client"]
    uid = add_countdown(client, 60, "tea")
    open_demo(page, jukebox["url"])
    page.wait_for_selector(f'#now-body[data-uid="{uid}"] #now-remaining')
    page.evaluate(COUNT_MUTATIONS, "#now-body")
    start_sent, started = len(page.net.sent), time.monotonic()
    for _ in range(10):
        press(page, f'#now-body[data-uid="{uid}"] button[title="add ten seconds"]')
    elapsed = time.monotonic() - started
    assert page.evaluate("window.mutations") >= 5, "the row did not change while it was pressed"
    told = sent_commands(page, start_sent, "tell_module")
    assert [t["args"]["cmd"] for t in told] == ["add_time"] * 10
    # 60 s + 10 x 10 s, less the time gone by: 9 presses out of 10 would leave it 10 s short.
    remaining = wait_for(lambda: client.queue.ask_module(uid=uid, parameters=["remaining"])["remaining"] > 150 - elapsed
                         - 5 and client.queue.ask_module(uid=uid, parameters=["remaining"])["remaining"], 10,
                         what="all ten presses to add their time")
    assert remaining <= 160


def test_every_press_on_a_row_below_a_counting_one_acts(page, jukebox):
    client = jukebox["client"]
    top = add_countdown(client, 120, "running")
    below = [add_countdown(client, 30, f"waiting {i}") for i in range(10)]
    open_demo(page, jukebox["url"])
    page.wait_for_function("document.querySelectorAll('#queue li[data-uid]').length === 10")
    page.wait_for_selector(f'#now-body[data-uid="{top}"] #now-remaining')
    page.evaluate(COUNT_MUTATIONS, "main")
    start_sent = len(page.net.sent)
    assert press_until_gone(page, [f'#queue li[data-uid="{uid}"]' for uid in below]) == 10
    assert page.evaluate("window.mutations") >= 5
    removed = sent_commands(page, start_sent, "rm")
    assert [r["args"]["uids"] for r in removed] == [[uid] for uid in below]
    wait_for(lambda: [item["uid"] for item in client.queue.queue()] == [top], 15, what="the ten rows removed")
    page.wait_for_function("document.querySelectorAll('#queue li[data-uid]').length === 0")


def test_every_press_on_a_blinking_light_acts(page, jukebox):
    client = jukebox["client"]
    clear_pool(client)
    uids = [client.pool.add(type="blinker", args={"color": "orange", "period": 0.1})["uid"] for _ in range(10)]
    try:
        open_demo(page, jukebox["url"])
        page.wait_for_function("document.querySelectorAll('#lights li[data-uid]').length === 10")
        page.evaluate(COUNT_MUTATIONS, "#lights")
        start_sent = len(page.net.sent)
        assert press_until_gone(page, [f'#lights li[data-uid="{uid}"]' for uid in uids]) == 10
        assert page.evaluate("window.mutations") >= 5
        assert [r["args"]["uids"] for r in sent_commands(page, start_sent, "rm")] == [[uid] for uid in uids]
        wait_for(lambda: client.pool.pool() == [], 15, what="the ten lights removed")
        page.wait_for_selector("#lights-empty", state="visible")
    finally:
        clear_pool(client)


def test_up_next_and_its_count(page, jukebox):
    client = jukebox["client"]
    open_demo(page, jukebox["url"])
    # An empty count shows nothing at all (it was a grey dot).
    assert page.is_hidden("#queue-count")
    first = add_countdown(client, 60, "first")
    second = add_countdown(client, 60, "second")
    page.wait_for_selector(f'#queue li[data-uid="{second}"]')
    assert page.get_attribute("#now-body", "data-uid") == first
    # "Up next" is what comes after the one playing.
    assert page.eval_on_selector_all("#queue li[data-uid]", "ls => ls.map(l => l.dataset.uid)") == [second]
    assert page.inner_text("#queue-count") == "1" and page.is_visible("#queue-count")
    assert page.is_hidden(f'#queue li[data-uid="{second}"] button[title="play next"]')  # it is next already
    # "Play next" puts a row after the one playing, which keeps playing.
    third = add_countdown(client, 60, "third")
    page.wait_for_selector(f'#queue li[data-uid="{third}"]')
    press(page, f'#queue li[data-uid="{third}"] button[title="play next"]')
    page.wait_for_function(f"[...document.querySelectorAll('#queue li[data-uid]')].map(l => l.dataset.uid).join() "
                           f"=== {json.dumps(third + ',' + second)}")
    assert [item["uid"] for item in client.queue.queue()] == [first, third, second]
    assert page.get_attribute("#now-body", "data-uid") == first
    client.queue.rm(uids=[second, third])
    page.wait_for_selector("#queue-empty", state="visible")
    assert page.is_hidden("#queue-count")


def test_a_shout_is_news_not_an_error(page, jukebox):
    uid = jukebox["client"].queue.add(type="shout", args={"text": "hello from the page"})["uid"]
    open_demo(page, jukebox["url"])
    page.click(f'#now-body[data-uid="{uid}"] button[title="shout it"]')
    page.wait_for_selector("#notice", state="visible")
    assert "HELLO FROM THE PAGE" in page.inner_text("#notice")
    assert page.is_hidden("#add-error")


def test_a_countdown_says_countdown_once(page, jukebox):
    open_demo(page, jukebox["url"])
    page.select_option("#add-type", "countdown")
    page.fill("#add-seconds", "20")
    page.click("#add-button")
    page.wait_for_selector("#now-body[data-uid] #now-remaining")
    page.wait_for_function("[...document.querySelectorAll('#history li .tag')].some(t => t.textContent === 'countdown')")
    rows = page.eval_on_selector_all(
        "#history li, #now-body, #queue li",
        "nodes => nodes.map(n => [...n.querySelectorAll('.tag, .title, .label')].map(c => c.textContent).join(' '))")
    assert not [r for r in rows if "countdown countdown" in r.lower()], rows
    history = page.eval_on_selector_all("#history li .label", "ls => ls.map(l => l.textContent)")
    assert history[0] == "20.0 s"


HOLD_ADD_ANSWER = """() => {
    const q = endpoints.queue, send = q.forceQuery.bind(q);
    window.answerAdd = null;
    q.forceQuery = (data, onResult, onError) => data.cmd !== "add" ? send(data, onResult, onError)
        : send(data, result => { window.answerAdd = () => onResult(result); }, onError);
}"""


def test_an_add_in_flight_keeps_what_was_typed_since(page, jukebox):
    open_demo(page, jukebox["url"])
    page.evaluate(HOLD_ADD_ANSWER)  # the add's answer reaches the page when the test says so
    page.fill("#add-text", "first thing to say")
    page.click("#add-button")
    page.wait_for_function("window.answerAdd !== null")
    page.fill("#add-text", "second thing, typed while the first was being added")
    page.evaluate("window.answerAdd()")
    assert page.input_value("#add-text") == "second thing, typed while the first was being added"
    assert page.is_enabled("#add-button")
    added = [item for item in jukebox["client"].queue.queue(parameters={"text": ["text"]})]
    assert [item["parameters"]["text"] for item in added] == ["first thing to say"], json.dumps(added)
