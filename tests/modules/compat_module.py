"""A module written in the style of the original (Python 2) shmooze helpers.

It subclasses JSONParentPoller with a ``commands`` dict of plain functions
called as ``handler(self, **args)``.  With ``--select-loop`` it drives the
connection from its own select() loop (like the original video/audio
modules did), publishing a ``beat`` counter every 50 ms while playing.
"""

import select
import time

from shmooze.modules import JSONParentPoller


class CompatModule(JSONParentPoller):
    def __init__(self):
        JSONParentPoller.__init__(self)
        self.text = ""
        self.playing = False
        self.beat = 0

    def cmd_init(self, text="", **kwargs):
        self.text = text
        self.set_parameters({"text": text, "status": "ready", "args": self.args})

    def cmd_play(self):
        self.playing = True
        self.set_parameters({"status": "playing"})

    def cmd_suspend(self):
        self.playing = False
        self.set_parameters({"status": "suspended"})

    def cmd_rm(self):
        self.set_parameters({"status": "removed"})

    def cmd_upper(self, text=None):
        return (self.text if text is None else text).upper()

    def cmd_fail(self):
        raise ValueError("boom")

    def cmd_unset(self, names):
        self.unset_parameters(names)
        return True

    def cmd_leave(self):
        self.rm()
        return "bye"

    commands = {
        "init": cmd_init,
        "play": cmd_play,
        "suspend": cmd_suspend,
        "rm": cmd_rm,
        "do_upper": cmd_upper,
        "do_fail": cmd_fail,
        "do_unset": cmd_unset,
        "do_leave": cmd_leave,
    }

    def select_loop(self):
        """The original style: select on the poller next to our own work."""
        next_beat = time.monotonic() + 0.05
        try:
            while not self.closed:  # closed after rm
                timeout = max(0.0, next_beat - time.monotonic())
                r, _, _ = select.select([self], [], [], timeout)
                if r:
                    self.handle_one_command()
                if time.monotonic() >= next_beat:
                    next_beat += 0.05
                    if self.playing:
                        self.beat += 1
                        self.set_parameters({"beat": self.beat})
        except OSError:  # the service closed the stream
            pass


if __name__ == "__main__":
    mod = CompatModule()
    if "--select-loop" in mod.args:
        mod.select_loop()
    else:
        mod.serve_forever()
