"""A module that writes a lot to stdout and stderr (tests that output is captured and never blocks)."""

import sys

from shmooze_module import Module


class Chatty(Module):
    def on_init(self, lines: int = 1000, **_):
        for i in range(lines):
            sys.stdout.write(f"chatty out {i}\n")
            sys.stderr.write(f"chatty err {i}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        self.set_parameters(written=lines)

    def do_say(self, text: str = ""):
        print(f"chatty says {text}", flush=True)
        return text


if __name__ == "__main__":
    Chatty.main()
