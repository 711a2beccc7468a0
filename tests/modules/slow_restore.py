"""A module whose ``init`` takes SECONDS when it is restored (a fresh start is quick): the restore of a
queue of them lasts, so tests can send commands while it runs.

Usage: ``python slow_restore.py SECONDS HOST CMD_PORT UPDATE_PORT``
"""

import sys
import time

from shmooze_module import Module

DELAY = float(sys.argv.pop(1))


class SlowRestore(Module):
    def on_init(self, **args):
        if self.restore_info is not None:
            time.sleep(DELAY)


if __name__ == "__main__":
    SlowRestore.main()
