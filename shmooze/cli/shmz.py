"""``shmz``: send one command to one service through the gateway and print the result.

    shmz queue add type=text args='{"text": "hi"}'
    shmz queue queue
    shmz --url 127.0.0.1:8080 pool add '{"type": "blinker"}'
    shmz queue commands          # every command, with its arguments
    shmz queue help add          # one command's description
    shmz watch queue
    shmz logs UID [-f]           what a module printed (see shmooze.cli.modlogs)

Shell completion: ``eval "$(shmooze completion bash)"`` (see shmooze.cli.completion).

Exit status: 0 on success, 1 when the command failed, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

EXIT_OK, EXIT_COMMAND, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def parse_args(words: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they parse) or one JSON object."""
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            value = json.loads(words[0])
        except json.JSONDecodeError as exc:
            raise UsageError(f"arguments are not a JSON object: {exc.msg} at column {exc.colno}") from None
        if not isinstance(value, dict):
            raise UsageError("arguments must be a JSON object")
        return value
    args: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {word!r} is not key=value (or give one JSON object)")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError as exc:
            if raw.lstrip()[:1] in ("{", "["):  # meant as JSON: say so rather than send a string
                raise UsageError(f"{key}: not valid JSON ({exc.msg} at column {exc.colno}): {raw}") from None
            args[key] = raw
    return args


def text_hint(words: list[str], message: str) -> str:
    """How to send as text a ``key=value`` that shmz read as JSON (``text=123``: a number) when the service
    answered that it must be a string; empty when that is not what went wrong."""
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(value, (str, list, dict)) or not re.search(rf"argument {re.escape(repr(key))} must be [^,]*\ba string\b",
                                                                 message):
            continue
        kind = "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"
        return f" (shmz read {key}={raw} as JSON, {kind}; to send it as text, quote it as JSON: {key}='\"{raw}\"')"
    return ""


def default_url() -> str:
    """``$SHMOOZE_URL``, else the gateway of the current settings file, else port 8080."""
    if os.environ.get("SHMOOZE_URL"):
        return os.environ["SHMOOZE_URL"]
    from shmooze import settings
    from shmooze.errors import SettingsError

    fallback = "http://127.0.0.1:8080/"
    try:
        app_settings = settings.current()
    except SettingsError as exc:
        if "settings file not found" not in str(exc):  # no settings here is usual; broken ones are told
            sys.stderr.write(f"shmz: {exc}; using {fallback}\n")
        return fallback
    if "wsgi" not in app_settings.ports:
        sys.stderr.write(f"shmz: {app_settings.path}: no 'wsgi' port; using {fallback}\n")
        return fallback
    return f"http://127.0.0.1:{app_settings.ports['wsgi']}{app_settings.wsgi_prefix}"


def show(result: Any) -> None:
    if result is None:
        return
    if isinstance(result, str):
        sys.stdout.write(result + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def signature(name: str, spec: dict[str, Any]) -> str:
    """``name(arg: type, arg: type = default)`` from one entry of a service's ``commands`` answer."""
    parts = []
    for arg in spec.get("args", []):
        text = arg["name"] + (f": {arg['type']}" if arg.get("type") else "")
        if not arg.get("required"):
            text += " = " + json.dumps(arg.get("default"), ensure_ascii=False)
        parts.append(text)
    if spec.get("more_args"):
        parts.append("...")
    return f"{name}({', '.join(parts)})"


def show_commands(described: Any, only: str | None = None) -> None:
    """Print a ``commands`` answer: each command's signature and the first sentence of its description.

    With ``only``, that one command with its whole description.
    """
    if not isinstance(described, dict):  # a service that answers only names
        if only is not None:
            raise UsageError(f"this service does not describe its commands ({', '.join(described)})")
        show("\n".join(described))
        return
    if only is not None:
        if only not in described:
            raise UsageError(f"no command {only!r} (commands: {', '.join(sorted(described))})")
        doc = described[only].get("doc") or "(no description)"
        show(signature(only, described[only]) + "\n\n" + "\n".join("    " + line for line in doc.splitlines()))
        return
    from shmooze.commands import summary

    lines = []
    for name in sorted(described):
        lines.append(signature(name, described[name]))
        first = summary(described[name].get("doc") or "")  # the first sentence whole, in plain text
        read_only = "(read-only) " if described[name].get("read_only") else ""
        if first or read_only:
            lines.append("    " + read_only + first)
    show("\n".join(lines))


def watch(service: Any, interval_timeout: float) -> int:
    """Print each change event of a service as it comes, until interrupted.

    When the service restarts, watching goes on: the gap is a line on stderr, then a
    ``reset`` line (the service's versions carry its instance, so the old one never passes).
    """
    from shmooze.errors import TransportError

    since = service.call("changes", {"since": 0, "timeout": 0})["version"]
    pause = 0.2
    while True:
        try:
            answer = service.call("changes", {"since": since, "timeout": interval_timeout},
                                  timeout=interval_timeout + 10)
        except TransportError as exc:
            sys.stderr.write(f"shmz: watch: {exc}; trying again in {pause:g} s\n")
            sys.stderr.flush()
            time.sleep(pause)  # a pause between attempts while the service is away
            pause = min(pause * 2, 5.0)
            continue
        pause = 0.2
        if answer.get("reset"):
            sys.stdout.write(json.dumps({"version": answer["version"], "kind": "reset"}) + "\n")
        for event in answer.get("events", []):
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        since = answer["version"]


def _subcommand_at(words: list[str], name: str) -> int | None:
    """Where ``name`` stands as the first positional word (after shmz's own options), if it does."""
    i = 0
    while i < len(words):
        if words[i] in ("--url", "--timeout", "--token"):
            i += 2
        elif words[i].startswith("-"):
            i += 1
        else:
            return i if words[i] == name else None
    return None


USAGE = """shmz [OPTIONS] SERVICE COMMAND [ARGS ...]   send one command (ARGS: key=value ... or one JSON object)
       shmz [OPTIONS] SERVICE commands               list a service's commands
       shmz [OPTIONS] SERVICE help COMMAND           describe one command
       shmz [OPTIONS] watch SERVICE                  print a service's change events as they come
       shmz [OPTIONS] logs UID [-f] [-n N]           what a module printed (shmz logs --help)"""


def _positional(words: list[str]) -> list[str]:
    """The words that are not shmz's options nor their values."""
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("--url", "--timeout", "--token"):
            skip = True
        elif not word.startswith("-"):
            found.append(word)
    return found


def _complete(words: list[str]) -> int:
    """``shmz --complete WORD ...``: what may come next, one a line (for the completion script)."""
    from shmooze.cli.completion import shmz_candidates
    from shmooze.client import Client

    url = words[words.index("--url") + 1] if "--url" in words[:-1] else None
    token = words[words.index("--token") + 1] if "--token" in words[:-1] else os.environ.get("SHMOOZE_TOKEN")
    client = Client(url or default_url(), timeout=1.0, token=token)
    sys.stdout.write("".join(f"{word}\n" for word in shmz_candidates(client, _positional(words))))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from shmooze import __version__

    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["--complete"]:
        return _complete(words[1:])
    parser = argparse.ArgumentParser(prog="shmz", usage=USAGE, description="Send one command to a shmooze service.",
                                     epilog="Exit status: 0 on success, 1 when the command failed, 2 on a usage or "
                                            "connection error.")
    parser.add_argument("--version", action="version", version=f"shmz (shmooze) {__version__}")
    parser.add_argument("--url", default=None, help="the gateway's URL (default: $SHMOOZE_URL or settings)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.add_argument("--token", default=os.environ.get("SHMOOZE_TOKEN"), help="access token")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, as the service sent it")
    parser.add_argument("service", metavar="SERVICE", help="service name, or 'watch' or 'logs'")
    parser.add_argument("cmd", nargs="?", metavar="COMMAND",
                        help="command name ('commands' lists them, 'help CMD' describes one; after 'watch', the "
                             "service; after 'logs', the module's uid)")
    parser.add_argument("args", nargs="*", default=[], metavar="ARGS",  # (a default: not said to be required)
                        help="key=value pairs (a value is read as JSON when it is JSON, else as text: text='\"123\"' "
                             "sends the text 123) or one JSON object; none for a command without arguments")
    logs_at = _subcommand_at(words, "logs")
    try:
        if logs_at is not None:  # shmz [OPTIONS] logs UID [-f] [-n N]: its own options
            opts = parser.parse_args(words[:logs_at] + ["logs", "-"])
            opts.args = words[logs_at + 1:]
        else:
            opts = parser.parse_args(words)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE

    from shmooze.client import Client
    from shmooze.errors import ServiceError, ShmoozeError

    client = Client(opts.url or default_url(), timeout=opts.timeout, token=opts.token)
    try:
        if opts.service == "logs":
            from shmooze.cli import modlogs

            try:
                return modlogs.main(client, opts.args)
            except SystemExit as exc:
                return EXIT_OK if exc.code == 0 else EXIT_USAGE
        if opts.cmd is None:
            if opts.service == "watch":
                raise UsageError("watch which service? (shmz watch SERVICE)")
            raise UsageError(f"which command of {opts.service}? (shmz {opts.service} commands lists them)")
        if opts.service == "watch":
            return watch(client.service(opts.cmd), 20.0)
        service = client.service(opts.service)
        if opts.cmd == "help":
            if len(opts.args) != 1:
                raise UsageError(f"help about which command? (shmz {opts.service} help CMD)")
            show_commands(service.call("commands"), only=opts.args[0])
        elif opts.cmd == "commands" and not opts.args and not opts.json:
            show_commands(service.call("commands"))
        else:
            result = service.call(opts.cmd, parse_args(opts.args))
            if opts.json:
                sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            else:
                show(result)
        return EXIT_OK
    except UsageError as exc:
        sys.stderr.write(f"shmz: {exc}\n")
        return EXIT_USAGE
    except ServiceError as exc:
        message = str(exc)
        if message.startswith(f"{opts.cmd}: "):  # the service named the command already
            message = message[len(opts.cmd) + 2:]
        sys.stderr.write(f"shmz: {opts.service} {opts.cmd}: {message}{text_hint(opts.args, message)}\n")
        return EXIT_COMMAND
    except ShmoozeError as exc:
        sys.stderr.write(f"shmz: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
