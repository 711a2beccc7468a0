"""``shmooze``: serve one service, or run, watch and stop a whole application.

    shmooze serve NAME [--settings FILE]   one service (or ``wsgi``, the gateway) in the foreground
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shmooze.errors import SettingsError

log = logging.getLogger("shmooze")


def _load_settings(path: str | None):  # -> Settings
    from shmooze import settings

    loaded = settings.load(path)
    # Application code named in 'services' lives beside its settings file.
    here = os.path.dirname(os.path.abspath(loaded.path))
    if here not in sys.path:
        sys.path.insert(0, here)
    return loaded


def cmd_serve(opts: argparse.Namespace) -> int:
    from shmooze.serve import serve

    serve(_load_settings(opts.settings), opts.name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmooze", description="Run shmooze services and applications.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve one service (or 'wsgi', the gateway) in the foreground")
    p.add_argument("name")
    p.add_argument("--settings", default=None, help="settings file (default: $SHMOOZE_SETTINGS or ./settings.json)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.func(opts)
    except SettingsError as exc:
        sys.stderr.write(f"shmooze: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
