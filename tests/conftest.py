"""Shared fixtures. The test process is a subreaper so nothing a test starts is left as a zombie."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
for extra in (str(ROOT), str(ROOT / "pymodule"), str(ROOT / "examples")):
    if extra not in sys.path:
        sys.path.insert(0, extra)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(ROOT / "pymodule"), str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

from shmooze import procutil  # noqa: E402

# Services that find no journal folder in their settings default to $XDG_STATE_HOME: not the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="shmooze-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)

procutil.become_subreaper()


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes():
    """Every test module ends with no new live descendant of the test process."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    procutil.reap_orphans(())
    me = psutil.Process()

    def leftovers():
        procutil.reap_orphans(())
        out = []
        for p in me.children(recursive=True):
            try:
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    from tests.helpers import wait_for

    try:
        wait_for(lambda: not leftovers(), 10, what="the test's processes to end")
    except AssertionError:
        left = leftovers()
        desc = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in left]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        pytest.fail(f"test left processes behind: {desc}")


@pytest.fixture
def make_host():
    """Build started module hosts in-process: ``make_host(Queue or Pool, modules, *more, **options)`` gives a
    :class:`~tests.helpers.Driver`; at the end every one is stopped and its orphan guard is gone."""
    from tests.helpers import Driver, gone, wait_for

    made = []

    def make(cls, modules=(), *more, limits_mode="auto", **options):
        host = cls(list(modules), *more, **options)
        host.limits_mode = limits_mode  # "rlimit": the fallback, whatever the kernel offers
        host.start()
        made.append(host)
        return Driver(host)

    yield make
    for host in made:
        host.stop()
        guard = host.status()["watchdog_pid"]
        assert guard is None or wait_for(lambda: gone(guard), 5, what=f"orphan guard {guard} to end")
