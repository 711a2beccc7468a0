"""A text "speaker": says its text one word at a time, then leaves the queue.

Without speakers attached it writes what it says to standard output (which the
queue captures into its log) and reports progress as parameters.
"""

from __future__ import annotations

import sys

from shmooze_module import Module


class Speaker(Module):
    def on_init(self, text: str = "hello from shmooze", rate: float = 3.0, **_: object) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        self.words = text.split()
        self.rate = max(0.2, min(20.0, float(rate)))
        self.said = 0
        self.timer = None
        self.set_parameters(text=text, spoken="", progress=0.0, state="waiting")

    def on_play(self, **_: object) -> None:
        if self.timer is None:
            self.timer = self.tick(1.0 / self.rate, self.say_next)
        self.set_parameters(state="speaking")

    def on_suspend(self, **_: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.set_parameters(state="paused")

    def say_next(self) -> None:
        word = self.words[self.said]
        self.said += 1
        sys.stdout.write(f"says: {word}\n")
        sys.stdout.flush()
        self.set_parameters(spoken=" ".join(self.words[: self.said]), progress=round(self.said / len(self.words), 3))
        if self.said >= len(self.words):
            self.set_parameters(state="done")
            self.rm()

    def do_rate(self, rate: float) -> float:
        """Change the speaking rate (words per second)."""
        self.rate = max(0.2, min(20.0, float(rate)))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.tick(1.0 / self.rate, self.say_next)
        return self.rate


if __name__ == "__main__":
    Speaker.main()
