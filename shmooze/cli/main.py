"""``shmooze``: serve one service, or run, watch and stop a whole application.

    shmooze run [SETTINGS]                 every service under supervisord, in the foreground
    shmooze status [--json]                every service and module of the running application
                                           (exit status 1 when one is down or reports a problem, or
                                           when it is not running: --json then prints {"running": false})
    shmooze stop [--clear]                 stop it (each service stops its modules through the ladder;
                                           the queues and pools come back on the next run, unless --clear)
    shmooze restart [SERVICE ...]          restart some services, or all
    shmooze logs [SERVICE] [-f] [-n N]     a service's log (with its modules' output), or all of them
    shmooze serve NAME                     one service (or ``wsgi``, the gateway) in the foreground
    shmooze completion bash                a bash completion script of shmooze and shmz
                                           (``eval "$(shmooze completion bash)"`` in ~/.bashrc)
    shmooze hash-password                  the argon2 hash of a password (read from the terminal or
                                           standard input) for ``users`` in the settings

Commands other than ``run`` find the application by ``--settings``, ``$SHMOOZE_SETTINGS`` or
``./settings.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from shmooze.errors import SettingsError, ShmoozeError

if TYPE_CHECKING:
    from shmooze.settings import Settings

log = logging.getLogger("shmooze")


def _load_settings(path: str | None) -> Settings:
    from shmooze import settings

    loaded = settings.load(path)
    # Application code named in 'services' lives beside its settings file.
    here = os.path.dirname(os.path.abspath(loaded.path))
    if here not in sys.path:
        sys.path.insert(0, here)
    return loaded


def cmd_serve(opts: argparse.Namespace) -> int:
    from shmooze.serve import serve

    os.umask(0o077)  # the service's files (journal, command log, module output) are its user's alone
    _own_address(opts.address)
    loaded = _load_settings(opts.settings)
    # What the service starts (modules, application code) finds the same settings.
    os.environ["SHMOOZE_SETTINGS"] = os.path.abspath(loaded.path)
    serve(loaded, opts.name)
    return 0


def cmd_run(opts: argparse.Namespace) -> int:
    from shmooze.deploy.runner import Runner

    os.umask(0o077)  # the run folder's files, and what supervisord and the services write
    _own_address(opts.address)  # (the services inherit it through supervisord)
    return Runner(_load_settings(opts.settings_file or opts.settings), conf=opts.supervisord_conf,
                  services=_service_list(opts.services)).run()


def _own_address(address: str | None) -> None:
    """``--address``: which of the candidates in ``hosts`` this host is (see Settings.own_address)."""
    from shmooze.settings import ADDRESS_VAR

    if address:
        os.environ[ADDRESS_VAR] = address


def _service_list(text: str | None) -> list[str] | None:
    """``--services queue,pool`` as a list (None: every service)."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    return names or None


def cmd_systemd_units(opts: argparse.Namespace) -> int:
    from shmooze.deploy import runner

    loaded = _load_settings(opts.settings)
    written = runner.write_systemd_units(loaded, opts.output, _service_list(opts.services), opts.user)
    target = next(path.name for path in written if path.suffix == ".target")
    sys.stdout.write("".join(f"wrote {path}\n" for path in written)
                     + f"then: systemctl daemon-reload && systemctl enable --now {target}\n")
    return 0


def cmd_status(opts: argparse.Namespace) -> int:
    import json

    from shmooze.cli import statustable
    from shmooze.deploy import runner

    settings = _load_settings(opts.settings)
    _own_address(opts.address or runner.run_address(settings))  # (where this host's services are asked)
    try:
        report = runner.status(settings)
    except runner.NotRunning:
        if not opts.json:
            raise
        report = runner.stopped_report(settings)  # JSON whatever the state, for scripts: {"running": false, ...}
    sys.stdout.write((json.dumps(report, indent=2) if opts.json else statustable.format_status(report)) + "\n")
    return 0 if report["running"] and runner.all_up(report) else 1


def cmd_logs(opts: argparse.Namespace) -> int:
    from shmooze.deploy import logs, runner

    settings = _load_settings(opts.settings)
    folder = runner.RunPaths.for_settings(settings).logs
    names = [opts.service] if opts.service else sorted(settings.ports)
    for name in names:
        if name not in settings.ports and name != "supervisord":
            raise ShmoozeError(f"no service named {name!r} (services: {', '.join(sorted(settings.ports))})")
    files = {name: folder / f"{name}.log" for name in names}
    missing = [str(path) for path in files.values() if not path.exists()]
    if len(missing) == len(files):
        raise ShmoozeError(f"no log yet at {', '.join(missing)} (has the application run?)")
    try:
        logs.show(files, sys.stdout, lines=opts.lines, follow=opts.follow)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_stop(opts: argparse.Namespace) -> int:
    from shmooze.deploy import runner
    from shmooze.hosting import journal

    loaded = _load_settings(opts.settings)
    try:
        pid = runner.stop(loaded)
        sys.stdout.write(f"shmooze: stopped (run pid {pid})\n")
    except runner.NotRunning:
        if not opts.clear:
            raise
        sys.stdout.write("shmooze: not running\n")
    if opts.clear:
        removed = journal.clear(loaded)
        sys.stdout.write(f"shmooze: forgot the saved modules ({len(removed)} journal(s) removed)\n")
    return 0


def cmd_restart(opts: argparse.Namespace) -> int:
    from shmooze.deploy import runner

    names = runner.restart(_load_settings(opts.settings), opts.services)
    sys.stdout.write(f"shmooze: restarted {', '.join(names)}\n")
    return 0


def cmd_completion(opts: argparse.Namespace) -> int:
    from shmooze.cli import completion

    sys.stdout.write(completion.bash(build_parser()))
    return 0


def cmd_hash_password(opts: argparse.Namespace) -> int:
    """Print the hash of a password, never taken from the command line (``ps`` shows that to everyone)."""
    from shmooze.gateway.users import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("shmooze: the two passwords differ\n")
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("shmooze: an empty password\n")
        return 1
    sys.stdout.write(hash_password(password) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from shmooze import __version__

    parser = argparse.ArgumentParser(prog="shmooze", description="Run shmooze services and applications.")
    parser.add_argument("--version", action="version", version=f"shmooze {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    settings_help = "settings file (default: $SHMOOZE_SETTINGS or ./settings.json)"

    p = sub.add_parser("run", help="run every service under supervisord in the foreground")
    p.add_argument("settings_file", nargs="?", default=None, metavar="SETTINGS")
    p.add_argument("--settings", default=None, help=settings_help)
    p.add_argument("--supervisord-conf", default=None, help="use this supervisord configuration as it is")
    p.add_argument("--services", default=None, metavar="NAME,NAME",
                   help="run only these services (those placed on this host; 'gateway' or 'wsgi' is the gateway)")
    p.add_argument("--address", default=None, metavar="ADDRESS[,ADDRESS]",
                   help="this host's address among the candidates in 'hosts' (default: found from its interfaces)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("systemd-units", help="write one systemd unit per service (and a target for them all)")
    p.add_argument("--settings", default=None, help=settings_help)
    p.add_argument("--services", default=None, metavar="NAME,NAME", help="only these services (this host's)")
    p.add_argument("--output", default=".", metavar="FOLDER",
                   help="where to write the units (default: here; /etc/systemd/system to install them)")
    p.add_argument("--user", default=None, help="the user the services run as (default: root)")
    p.set_defaults(func=cmd_systemd_units)

    p = sub.add_parser("status", help="show every service and module")
    p.add_argument("--settings", default=None, help=settings_help)
    p.add_argument("--address", default=None, metavar="ADDRESS[,ADDRESS]",
                   help="this host's address among the candidates in 'hosts' (default: what 'shmooze run' was given)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="stop the running application")
    p.add_argument("--settings", default=None, help=settings_help)
    p.add_argument("--clear", action="store_true",
                   help="also forget the queues and pools (their journals): the next run starts empty")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("restart", help="restart services (all when none is named)")
    p.add_argument("services", nargs="*", metavar="SERVICE")
    p.add_argument("--settings", default=None, help=settings_help)
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("logs", help="show a service's log (with its modules' output), or every log")
    p.add_argument("service", nargs="?", default=None, metavar="SERVICE")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing lines as they are written")
    p.add_argument("-n", "--lines", type=int, default=40, help="how many last lines to show first (default 40)")
    p.add_argument("--settings", default=None, help=settings_help)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("serve", help="serve one service (or 'wsgi', the gateway) in the foreground")
    p.add_argument("name")
    p.add_argument("--settings", default=None, help=settings_help)
    p.add_argument("--address", default=None, metavar="ADDRESS[,ADDRESS]",
                   help="this host's address among the candidates in 'hosts' (default: found from its interfaces)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("completion", help="print a shell completion script of shmooze and shmz",
                       description='Print a completion script: eval "$(shmooze completion bash)" in ~/.bashrc.')
    p.add_argument("shell", choices=["bash"])
    p.set_defaults(func=cmd_completion)
    p = sub.add_parser("hash-password", help="print the hash of a password for 'users' in the settings")
    p.set_defaults(func=cmd_hash_password)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.func(opts)
    except SettingsError as exc:
        sys.stderr.write(f"shmooze: {exc}\n")
        return 2
    except ShmoozeError as exc:
        sys.stderr.write(f"shmooze: {exc}\n")
        return 1
    except OSError as exc:
        from shmooze.system.storage import is_full

        if not is_full(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"shmooze: a write failed{where}: {exc.strerror}; free some space and try again\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
