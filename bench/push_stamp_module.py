"""The push benchmark's module: while playing, sets ``{"seq": n, "sent": time.time()}`` every ``interval`` s."""

import time

from shmooze_module import Module


class Stamp(Module):
    """A clock that says when it spoke: the receiver compares ``sent`` with its own clock."""

    def on_init(self, interval=0.05, **_):
        self.interval = float(interval)
        self.seq = 0
        self.timer = None

    def on_play(self, **_):
        if self.timer is None:
            self.timer = self.tick(self.interval, self.stamp)

    def on_suspend(self, **_):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def stamp(self):
        self.seq += 1
        self.set_parameters(seq=self.seq, sent=time.time())


if __name__ == "__main__":
    Stamp.main()
