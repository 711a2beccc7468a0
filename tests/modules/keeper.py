"""A module that shows what it was started with: for the restore tests (shmooze_module helper).

Usage: ``python keeper.py [--original] HOST CMD_PORT UPDATE_PORT``

At ``init`` it sets parameters ``args`` (its init arguments), ``restored`` (the helper's
``restore_info``) and ``env`` (``$SHMOOZE_RESTORED``). ``do_set`` sets the parameters it is
given. With ``--original`` it is written on the original API (``JSONParentPoller`` and a
``commands`` table) and records its init arguments the same way.
"""

import os
import sys

from shmooze_module import JSONParentPoller, Module


class Keeper(Module):
    def on_init(self, **args):
        self.set_parameters(args=args, restored=self.restore_info, env=os.environ.get("SHMOOZE_RESTORED"))

    def do_set(self, **params):
        self.set_parameters(params)


def original_init(self, **args):
    self.set_parameters({"args": args, "original": True})


class Original(JSONParentPoller):
    commands = {"init": original_init}


if __name__ == "__main__":
    if "--original" in sys.argv:
        sys.argv.remove("--original")
        Original().serve_forever()
    else:
        Keeper.main()
