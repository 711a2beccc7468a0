"""A module written as applications of the original framework wrote theirs, with Python 3 changes only.

It mixes the poller with ``threading.Thread`` (``super().__init__()`` reaches both), answers with
``shmooze.lib.packet``, sends a whole message with ``self.connection.send_update`` and reads the
service's answer with ``recv_update_resp``. Its main loop calls ``handle_one_command()`` until the
thread ends, and after the loop it cleans up: it writes ``cleaned up after N beats`` to the file
named by ``init``'s ``marker`` argument. That code runs only if the helper lets the module end on
its own after ``rm``.
"""

import threading
import time

import shmooze.lib.packet as packet
from shmooze.modules import JSONParentPoller


class Beater(JSONParentPoller, threading.Thread):
    def __init__(self):
        super().__init__()
        self.daemon = True
        self.init_event = threading.Event()
        self.running = True
        self.playing = False
        self.beats = 0
        self.marker = None

    def run(self):
        self.init_event.wait()
        while self.running:
            if self.playing:
                self.beats += 1
                self.set_parameters({"beats": self.beats})
            time.sleep(0.02)

    def cmd_init(self, marker=None):
        self.marker = marker
        self.set_parameters({"status": "ready"})
        self.init_event.set()

    def cmd_play(self):
        self.playing = True

    def cmd_suspend(self):
        self.playing = False

    def cmd_rm(self):
        self.running = False

    def cmd_confirmed(self):
        self.connection.send_update({"cmd": "set_parameters", "args": {"parameters": {"confirmed": True}}})
        return packet.good(self.connection.recv_update_resp())

    commands = {
        "init": cmd_init,
        "play": cmd_play,
        "suspend": cmd_suspend,
        "rm": cmd_rm,
        "do_confirmed": cmd_confirmed,
    }


mod = Beater()
mod.start()
while mod.is_alive():
    try:
        mod.handle_one_command()
    except OSError:
        break

mod.join(5)
if mod.marker:
    with open(mod.marker, "w") as f:
        f.write(f"cleaned up after {mod.beats} beats")
