"""A countdown: updates ``remaining`` every 100 ms while playing and leaves the queue at zero."""

from __future__ import annotations

import time

from shmooze_module import Module

STEP = 0.1


class Countdown(Module):
    def on_init(self, seconds: float = 10.0, label: str = "countdown", **_: object) -> None:
        seconds = float(seconds)
        if not 0 < seconds <= 24 * 3600:
            raise ValueError("seconds must be more than 0 and at most a day")
        self.remaining = seconds
        if self.restore_info:  # the queue restarted: carry on from where this countdown was
            last = self.restore_info.get("parameters", {}).get("remaining")
            if isinstance(last, (int, float)) and 0 < last <= seconds:
                self.remaining = float(last)
        self.timer = None
        self.last = None
        self.set_parameters(label=label, seconds=seconds, remaining=round(self.remaining, 1), state="waiting")

    def on_play(self, **_: object) -> None:
        if self.timer is None:
            self.last = time.monotonic()
            self.timer = self.tick(STEP, self.step)
        self.set_parameters(state="running")

    def on_suspend(self, **_: object) -> None:
        self.step()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.set_parameters(state="paused")

    def step(self) -> None:
        now = time.monotonic()
        if self.last is not None:
            self.remaining = max(0.0, self.remaining - (now - self.last))
        self.last = now
        self.set_parameters(remaining=round(self.remaining, 1))
        if self.remaining <= 0:
            self.set_parameters(state="done")
            self.rm()

    def do_add_time(self, seconds: float = 10.0) -> float:
        """Add seconds to the countdown; answers the new remaining time."""
        self.remaining += float(seconds)
        self.set_parameters(remaining=round(self.remaining, 1))
        return round(self.remaining, 1)


if __name__ == "__main__":
    Countdown.main()
