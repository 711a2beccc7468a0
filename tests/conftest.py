"""Shared fixtures. The test process is a subreaper so nothing a test starts is left as a zombie."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
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

from shmooze.system import procutil  # noqa: E402

# Services that find no journal folder in their settings default to $XDG_STATE_HOME: not the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="shmooze-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)

procutil.become_subreaper()

# A suite started in the background (a shell's `cmd &`, nohup) inherits SIGINT and SIGQUIT ignored, and
# so would every process it starts: a test that stops a command with Ctrl-C (SIGINT) would then wait
# for a process that cannot hear it. They are put back as an interactive start has them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


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
        assert guard is None or wait_for(lambda guard=guard: gone(guard), 5, what=f"orphan guard {guard} to end")


@pytest.fixture
def make_queue(make_host):
    """Build started queues (see :func:`make_host`)."""
    from shmooze.queue import Queue

    return lambda modules=(), backgrounds=(), **options: make_host(Queue, modules, list(backgrounds), **options)


@pytest.fixture
def parent():
    """The service's side of a module's two streams, played with plain sockets (tests/fakeparent.py)."""
    from tests.fakeparent import FakeParent, pid_gone

    p = FakeParent()
    try:
        yield p
    finally:
        p.close()
        if p.proc is not None:
            assert pid_gone(p.proc.pid)


@pytest.fixture(scope="module")
def cluster():
    """A real etcd cluster of three members on loopback (shmooze.testing.etcd), for a module's tests."""
    from shmooze.testing import etcd as etcd_kit

    members = etcd_kit.EtcdCluster(3)
    try:
        members.start()
        yield members
    finally:
        members.stop()


# The browser tests' fixtures (tests/test_browser.py makes them; importing it skips where no Chromium
# or Playwright is): here, so that every browser test module has them without importing them.

@pytest.fixture(scope="module")
def jukebox(tmp_path_factory):
    from tests.test_browser import jukebox_stack

    yield from jukebox_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    from tests.test_browser import headless_chromium

    yield from headless_chromium()


@pytest.fixture
def page(browser, jukebox):
    from tests.test_browser import recorded_page

    yield from recorded_page(browser, jukebox)
