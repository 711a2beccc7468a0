"""A banner: shows its text on the "screen" as a scrolling marquee, then leaves the queue.

It is written with the original framework's module API, the way that framework's text-to-screen
modules were, to show (and test, in the demo itself) that such modules port with Python 3 changes
only: the poller mixed with a ``threading.Thread`` that draws, a ``commands`` table, a main loop
of ``handle_one_command()`` and cleanup after that loop, which runs once the module is removed.

The "screen" is standard output (the queue keeps it in its log) and the ``shown`` parameter.
"""

import socket
import sys
import threading
import time

from shmooze.modules import JSONParentPoller

WIDTH = 24  # characters on the screen
STEP = 0.12  # seconds between frames


class Banner(JSONParentPoller, threading.Thread):
    def __init__(self):
        super(Banner, self).__init__()
        self.daemon = True
        self.running = True
        self.showing = threading.Event()  # set while on top of the queue (and to wake the thread to stop)
        self.text = ""
        self.passes = 1
        self.frame = 0

    # -- the drawing thread ----------------------------------------------------------------

    def frames(self):
        tape = " " * WIDTH + self.text + " " * WIDTH  # in from the right, out to the left
        return [tape[i:i + WIDTH] for i in range(len(tape) - WIDTH + 1)]

    def run(self):
        frames = self.frames()
        total = len(frames) * self.passes
        while self.running and self.frame < total:
            self.showing.wait()
            if not self.running:
                break
            shown = frames[self.frame % len(frames)]
            sys.stdout.write("banner: [%s]\n" % shown)
            sys.stdout.flush()
            self.frame += 1
            self.set_parameters({"shown": shown, "progress": round(self.frame / float(total), 3)})
            time.sleep(STEP)
        if self.running:  # every pass shown: leave the queue
            self.set_parameters({"state": "done"})
            self.rm()

    # -- commands ----------------------------------------------------------------------------

    def cmd_init(self, text="hello from shmooze", passes=1, **_):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        self.text = " ".join(text.split())
        self.passes = max(1, min(10, int(passes)))
        self.set_parameters({"text": self.text, "shown": "", "progress": 0.0, "state": "waiting"})
        self.start()

    def cmd_play(self):
        self.showing.set()
        self.set_parameters({"state": "showing"})

    def cmd_suspend(self):
        self.showing.clear()
        self.set_parameters({"state": "paused"})

    def cmd_rm(self):
        self.running = False
        self.showing.set()

    def cmd_again(self):
        """Start over from the first frame (tell_module cmd=again)."""
        self.frame = 0
        return self.frame

    commands = {
        "init": cmd_init,
        "play": cmd_play,
        "suspend": cmd_suspend,
        "rm": cmd_rm,
        "do_again": cmd_again,
    }


if __name__ == "__main__":
    mod = Banner()
    while mod.running:
        try:
            mod.handle_one_command()
        except socket.error:  # the queue closed the stream: the banner left by itself
            break
    # The module's own cleanup, after its loop: stop drawing and clear the screen.
    mod.running = False
    mod.showing.set()
    if mod.is_alive():
        mod.join(2)
    sys.stdout.write("banner: screen cleared\n")
    sys.stdout.flush()
