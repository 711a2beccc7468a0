"""A module for the operations tests: prints, burns CPU, allocates, opens files, exits on request.

``init`` args: ``exit_after`` (seconds; then exit with ``exit_code``), ``spin`` (seconds of busy
CPU right after init, on a timer), ``alloc_mb`` (allocate that much after init, on a timer),
``forks`` (start that many ``sleep`` children; crash when one cannot start), ``bomb`` (start a
fork bomb beside it), ``bye`` (a line it prints on stdout and stderr when it gets ``rm``).
"""

import os
import subprocess
import sys
import time
import traceback

from shmooze_module import Module

BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.05)
"""


class OpsModule(Module):
    def on_init(self, exit_after=None, exit_code=1, spin=0, alloc_mb=0, files=0, forks=0, bomb=False, bye=None,
                **_):
        print(f"opsmod {os.getpid()} started", flush=True)
        self.bye = bye
        if exit_after is not None:
            self.call_later(float(exit_after), lambda: self._leave(int(exit_code)))
        if spin:
            self.call_later(0.01, lambda: self._spin(float(spin)))
        if alloc_mb:
            self.call_later(0.01, lambda: self._alloc(int(alloc_mb)))
        if files:
            self.call_later(0.01, lambda: self._open(int(files)))
        if forks:
            self.call_later(0.01, lambda: self._fork(int(forks)))
        if bomb:  # every process forks for ever, and tries again when the fork is refused
            self.bomb = subprocess.Popen([sys.executable, "-c", BOMB], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def _leave(self, code):
        print(f"opsmod leaving with {code}", flush=True)
        sys.stderr.write("opsmod bye on stderr\n")
        sys.stderr.flush()
        os._exit(code)

    def _spin(self, seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def _alloc(self, mb):
        try:
            self.hog = bytearray(mb << 20)  # MemoryError under limit_memory
        except MemoryError:
            self._crash()
        print(f"opsmod holds {mb} MiB", flush=True)

    def _open(self, count):
        try:
            self.held = [open(os.devnull) for _ in range(count)]  # EMFILE under limit_files
        except OSError:
            self._crash()

    def _fork(self, count):
        try:
            self.children = [subprocess.Popen(["sleep", "60"]) for _ in range(count)]  # EAGAIN at pids.max
        except OSError:
            self._crash()
        print(f"opsmod started {count} children", flush=True)

    def _crash(self):
        """Die as an uncaught exception would: the traceback on stderr, status 1."""
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)

    def on_rm(self, **_):
        if self.bye:  # its last words, on both streams, as it goes
            print(f"{self.bye} on stdout", flush=True)
            sys.stderr.write(f"{self.bye} on stderr\n")
            sys.stderr.flush()

    def do_say(self, text=""):
        print(text, flush=True)
        return text


if __name__ == "__main__":
    OpsModule.main()
