"""The background: a clock that shows the time whenever the queue is empty."""

from __future__ import annotations

import time

from shmooze_module import Module


class Clock(Module):
    def on_init(self, format: str = "%H:%M:%S", **_: object) -> None:
        self.format = format
        self.timer = None
        self.set_parameters(time=time.strftime(self.format), state="hidden")

    def on_play(self, **_: object) -> None:
        if self.timer is None:
            self.timer = self.tick(1.0, self.show)
        self.set_parameters(time=time.strftime(self.format), state="showing")

    def on_suspend(self, **_: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.set_parameters(state="hidden")

    def show(self) -> None:
        self.set_parameters(time=time.strftime(self.format))


if __name__ == "__main__":
    Clock.main()
