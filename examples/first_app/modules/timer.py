from shmooze_module import Module


class Timer(Module):
    def on_init(self, seconds=10, label="timer", **_):
        self.remaining = float(seconds)
        self.timer = None
        self.set_parameters(label=label, remaining=self.remaining)

    def on_play(self, **_):
        self.timer = self.tick(0.5, self.step)

    def on_suspend(self, **_):
        if self.timer is not None:
            self.timer.cancel()

    def step(self):
        self.remaining = max(0.0, self.remaining - 0.5)
        self.set_parameters(remaining=self.remaining)
        if self.remaining == 0:
            self.rm()  # done: leave the queue, the next module plays

    def do_add_time(self, seconds=10):
        self.remaining += seconds
        self.set_parameters(remaining=self.remaining)
        return self.remaining


if __name__ == "__main__":
    Timer.main()
