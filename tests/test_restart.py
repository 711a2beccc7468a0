"""Restart policies as pure logic (no processes): what is restarted, the backoff, giving up."""

import pytest

from shmooze.moduletype import ModuleType
from shmooze.restart import Policy, Tracker


def test_modes_decide_what_is_restarted():
    never, on_failure, always = Policy("never"), Policy("on-failure"), Policy("always")
    assert not never.wants(failed=True, removed=False)
    assert on_failure.wants(failed=True, removed=False) and not on_failure.wants(failed=False, removed=False)
    assert always.wants(failed=False, removed=False)
    assert not always.wants(failed=True, removed=True) and not on_failure.wants(failed=True, removed=True)


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run():
    t = Tracker(Policy("always", delay=1, max_delay=5, max_starts=100, window=60))
    now = 0.0
    delays = []
    for _ in range(5):
        t.started(now)
        now += 1
        delay = t.ended(now, failed=True, removed=False)
        delays.append(delay)
        now += delay
    assert delays == [1, 2, 4, 5, 5]
    assert t.view(now - 1)["next_try"] == pytest.approx(1)
    t.started(now)
    assert t.ended(now + 61, failed=True, removed=False) == 1  # ran a whole window: back to the start delay


def test_gives_up_after_max_starts_within_the_window():
    t = Tracker(Policy("on-failure", delay=0, max_delay=0, max_starts=3, window=10))
    t.started(0)
    assert t.ended(1, True, False) == 0
    t.started(1)
    assert t.ended(2, True, False) == 0
    t.started(2)
    assert t.ended(3, True, False) is None and t.given_up and t.view(3)["given_up"]
    # Starts older than the window no longer count.
    u = Tracker(Policy("on-failure", delay=0, max_delay=0, max_starts=2, window=10))
    for now in (0, 20, 40, 60):
        u.started(now)
        assert u.ended(now + 1, True, False) == 0


def test_bad_settings_are_refused_when_the_type_is_made():
    with pytest.raises(ValueError, match="restart must be one of"):
        ModuleType("x", ("true",), restart="sometimes")
    with pytest.raises(ValueError, match="restart_delay"):
        ModuleType("x", ("true",), restart="always", restart_delay=10, restart_max_delay=1)
    assert Policy.of(ModuleType("x", ("true",))).mode == "never"
