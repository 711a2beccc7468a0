"""A text module as the original's were written: a commands table on JSONParentPoller."""

import os

from shmooze.modules import JSONParentPoller


class Text(JSONParentPoller):
    def __init__(self):
        super().__init__()
        self.running = True

    def cmd_init(self, text="", fail_play=False):
        self.text = text
        self.fail_play = fail_play
        self.set_parameters({"text": text, "status": "added", "display": os.environ.get("DISPLAY"),
                             "office": os.environ.get("OFFICE")})

    def cmd_play(self):
        if self.fail_play:
            raise Exception("cannot play this one")
        self.set_parameters({"status": "playing"})

    def cmd_suspend(self):
        self.set_parameters({"status": "suspended"})

    def cmd_rm(self):
        self.running = False

    def cmd_shout(self, times=1):
        return self.text.upper() * times

    def cmd_whisper(self):
        raise Exception("this module cannot whisper")

    commands = {
        "init": cmd_init,
        "play": cmd_play,
        "suspend": cmd_suspend,
        "rm": cmd_rm,
        "do_shout": cmd_shout,
        "do_whisper": cmd_whisper,
    }


mod = Text()
while mod.running:
    try:
        mod.handle_one_command()
    except OSError:
        break
