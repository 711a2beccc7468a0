"""The stop ladders' thread pool (shmooze.system.elastic): a few threads for quick jobs, and no job held
back long by jobs that wait (a ladder waiting out a module's timeouts)."""

from __future__ import annotations

import threading

import pytest

from shmooze.system.elastic import ElasticPool
from tests.helpers import wait_for


def test_quick_jobs_run_on_at_most_size_threads():
    pool = ElasticPool(size=3, slow=30.0)  # (no job is slow here, however busy the machine)
    lock = threading.Lock()
    running, most, threads = 0, 0, set()

    def job(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
        with lock:
            running -= 1
        return i * 2

    futures = [pool.submit(job, i) for i in range(300)]
    assert [f.result(10) for f in futures] == [i * 2 for i in range(300)]
    assert most <= 3 and len(threads) <= 3, (most, threads)


def test_a_job_waits_at_most_about_slow_behind_jobs_that_wait():
    """Twenty ladders that each wait (modules that ignore rm), on a pool of two: all of them run at once
    soon after, none waits for another to end."""
    pool = ElasticPool(size=2, slow=0.05)
    release = threading.Event()
    lock = threading.Lock()
    started: list[int] = []

    def stuck(i: int) -> int:
        with lock:
            started.append(i)
        release.wait(30)
        return i

    futures = [pool.submit(stuck, i) for i in range(20)]
    try:
        wait_for(lambda: len(started) == 20, 5, what="every stuck job to be running at once")
    finally:
        release.set()
    assert sorted(f.result(10) for f in futures) == list(range(20))


def test_a_failed_job_hands_its_exception_to_its_future_and_the_pool_goes_on():
    pool = ElasticPool(size=1, slow=30.0)

    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        pool.submit(fail).result(10)
    assert pool.submit(lambda: 7).result(10) == 7


def test_an_idle_thread_keeps_nothing_of_its_last_job():
    """(A stopped module's handle, with its process and streams, is the argument of its ladder's job.)"""
    import gc
    import weakref

    class Handle:
        pass

    pool = ElasticPool(size=2, slow=30.0)
    handle = Handle()
    gone = weakref.ref(handle)
    pool.submit(lambda h: None, handle).result(10)
    del handle
    wait_for(lambda: gc.collect() is not None and gone() is None, 5, what="the job's argument to be freed")
