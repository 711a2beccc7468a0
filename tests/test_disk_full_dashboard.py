"""The dashboard shows a service's full disk, and shows it gone once space returns,
in a real headless Chromium against a real pool whose journal and command log are on a full tmpfs.
Skipped where Chromium or Playwright is missing (as test_browser.py), or without root (the tmpfs)."""

from __future__ import annotations

import pytest

try:
    import playwright.sync_api  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("the playwright Python package is not installed", allow_module_level=True)

from tests.test_browser import CHROMIUM

if not CHROMIUM:  # pragma: no cover
    pytest.skip("no Chromium", allow_module_level=True)

from shmooze.client import Client
from tests.helpers import Stack
from tests.test_disk_full import RECOVERY, fill, small_disk  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)


def test_the_dashboard_shows_a_full_disk_until_space_returns(browser, small_disk, tmp_path):  # noqa: F811 - the fixture above
    filler = fill(small_disk)  # full before the pool starts: it starts all the same, with the problem
    try:
        with Stack(tmp_path, {"pool": "tests.apps:make_pool"}, run_path=str(tmp_path / "run"), stop_timeout=3,
                   journal_path=str(small_disk / "state"), log_database_path=str(small_disk / "log.db")) as stack:
            problem = Client(stack.url).pool.status()["problem"]
            assert problem and "disk full" in problem, problem
            page = browser.new_context().new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(stack.url + "_shmooze/")
            page.wait_for_function("window.dashboardReady === true", timeout=10_000)
            page.wait_for_selector(".card[data-service=pool] .dot.problem", timeout=10_000)
            shown = page.text_content(".card[data-service=pool] p.problem")
            assert "disk full" in shown and "cannot be written" in shown, shown

            filler.unlink()
            filler = None
            page.wait_for_selector(".card[data-service=pool] .dot.up", timeout=RECOVERY * 1000)
            assert page.query_selector(".card[data-service=pool] p.problem") is None
            assert not errors, errors
            page.context.close()
    finally:
        if filler is not None:
            filler.unlink()
