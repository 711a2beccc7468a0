#!/usr/bin/env python3
"""Write the documentation's reference pages from the code:

* docs/settings.md from the settings registry (shmooze/registry.py): every key, its type, default
  and meaning;
* docs/cli.md from the argument parsers of ``shmooze`` and ``shmz`` (shmooze/cli/): every
  subcommand and option with its help.

Each page keeps what is above its marker line (prose written by hand) and is rewritten below it.

    python3 scripts/docs_reference.py          rewrite both pages
    python3 scripts/docs_reference.py --check  exit 1 if either is not up to date

tests/test_docs.py runs the check. The parsers are read as built (whatever options they have), not
from ``--help`` output, so the pages do not change with the Python version's help formatting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shmooze import registry  # noqa: E402

DOCS = ROOT / "docs"
SETTINGS_PAGE = DOCS / "settings.md"
CLI_PAGE = DOCS / "cli.md"
MARKER = "<!-- reference:begin (written by scripts/docs_reference.py from the code; edit above this line) -->"

SETTINGS_INTRO = """# Settings

One JSON file: `$SHMOOZE_SETTINGS`, else `./settings.json`. `shmooze/registry.py` declares every
key once, with its type, default, meaning and check; a file with invalid values is refused before
anything starts, with every problem in one message. Keys the registry does not declare are the
application's own and are left as they are. `settings.example.json` lists every key with its
default.

"""

CLI_INTRO = """# Command line

Two commands come with shmooze: `shmooze` runs an application (its services under supervisord)
and `shmz` sends one command to one of its services through the gateway.

"""


# -- settings ----------------------------------------------------------------------------------

def _cells(parse: Callable[..., Any]) -> dict[str, Any]:
    """The values a parser factory closed over (``whole(1)`` keeps ``least``, ``choice`` its options)."""
    code = getattr(parse, "__code__", None)
    cells = getattr(parse, "__closure__", None) or ()
    return dict(zip(code.co_freevars, (c.cell_contents for c in cells))) if code else {}


def type_of(parse: Callable[..., Any]) -> str:
    """What a key's parser accepts, in words."""
    name = getattr(parse, "__name__", "")
    cells = _cells(parse)
    if name == "parse_optional":
        return type_of(cells["parse"]) + " or null"
    if "options" in cells:
        return " or ".join(f"`{json.dumps(option)}`" for option in cells["options"])
    if "least" in cells:
        return f"whole number >= {cells['least']}"
    words = {
        "seconds": "number > 0", "rate": "number >= 0", "text": "string", "flag": "true or false",
        "names": "list of strings", "prefix": "path starting and ending with `/`",
        "port_table": "object: name to port", "address_table": "object: name to address",
        "candidate_table": "object: name to address or list of addresses",
        "listen_table": "address, or object: name to address",
        "service_table": "object: name to `\"module:factory\"`", "secret": "string of 16 characters or more",
        "type_table": "object: type name to settings",
    }
    return words.get(name, name or "value")


def default_of(key: registry.Key[Any]) -> str:
    if key.default == registry.STATIC_DIR:
        return "the framework's static folder (with `shmooze.js`)"
    if key.default is None:
        return "unset"
    if key.default in ({}, []):
        return "empty"
    return f"`{json.dumps(key.default)}`"


def settings_reference() -> str:
    lines = ["## Every key", "",
             "Written from `shmooze/registry.py`, in its order. Every key ending in `_path` has `$VAR`, `${VAR}` and",
             "`~` expanded, and a relative path is taken relative to the settings file.", "",
             "| name | type | default | meaning |", "|---|---|---|---|"]
    for name, key in registry.KEYS.items():
        meaning = key.doc.replace("|", "\\|")
        lines.append(f"| `{name}` | {type_of(key.parse)} | {default_of(key)} | {meaning} |")
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------------------------

class _Captured(BaseException):
    """Raised out of a CLI's ``main`` once its parser is seen (a BaseException: no except catches it)."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@contextlib.contextmanager
def _capturing(prog: str) -> Iterator[None]:
    """While inside, the parser named ``prog`` raises :class:`_Captured` instead of parsing; others parse."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        if self.prog == prog:
            raise _Captured(self)
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]


def parser_of(main: Callable[[list[str]], Any], argv: list[str], prog: str) -> argparse.ArgumentParser:
    """The parser named ``prog`` that ``main(argv)`` builds (its program is not run)."""
    with _capturing(prog):
        try:
            main(argv)
        except _Captured as captured:
            return captured.parser
    raise RuntimeError(f"{prog}: no parser of that name was used by {main.__module__}.main({argv})")


def _option_row(action: argparse.Action) -> str | None:
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):  # noqa: SLF001 - argparse's kinds
        return None
    if action.option_strings:
        takes = action.nargs != 0
        metavar = action.metavar or action.dest.upper()
        name = ", ".join(f"`{o} {metavar}`" if takes else f"`{o}`" for o in action.option_strings)
    else:
        name = f"`{action.metavar or action.dest.upper()}`"
        if action.nargs in ("?", "*"):
            name += " (optional)" if action.nargs == "?" else " ..."
    text = (action.help or "").replace("|", "\\|")
    if action.help == argparse.SUPPRESS:
        return None
    if action.choices and not isinstance(action.choices, dict):
        text = (text + " " if text else "") + "(one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in text and action.nargs != 0:
        text += f" (default: `{action.default}`)"
    return f"| {name} | {text} |"


def _parser_section(title: str, parser: argparse.ArgumentParser, about: str | None = None) -> list[str]:
    lines = [f"## `{title}`", ""]
    if about or parser.description:
        lines += [(about or parser.description or "").strip(), ""]
    rows = [row for row in map(_option_row, parser._actions) if row]  # noqa: SLF001 - the parser's actions
    if rows:
        lines += ["| argument | meaning |", "|---|---|", *rows, ""]
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    found = []
    for action in parser._actions:  # noqa: SLF001 - the parser's actions
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - argparse's kind
            helps = {choice.dest: choice.help for choice in action._choices_actions}  # noqa: SLF001
            for name, sub in action.choices.items():
                found.append((name, sub, helps.get(name) or ""))
    return found


def cli_reference() -> str:
    from shmooze.cli import main as shmooze_main
    from shmooze.cli import shmz

    shmooze = parser_of(shmooze_main.main, ["--help"], "shmooze")
    lines = _parser_section("shmooze", shmooze)
    for name, sub, about in _subcommands(shmooze):
        lines += _parser_section(f"shmooze {name}", sub, about.rstrip(".").capitalize() + "." if about else None)
    doc = (shmz.__doc__ or "").strip().split("\n\n")
    lines += _parser_section("shmz", parser_of(shmz.main, ["--help"], "shmz"))
    if len(doc) > 1:
        lines += ["```sh", *[line.strip() for line in doc[1].splitlines()], "```", ""]
    if len(doc) > 2:
        lines += [" ".join(part.strip() for part in doc[2].splitlines()), ""]
    lines += _parser_section("shmz logs", parser_of(shmz.main, ["logs", "--help"], "shmz logs"))
    return "\n".join(lines).rstrip("\n") + "\n"


# -- pages -------------------------------------------------------------------------------------

def page(path: Path, intro: str, reference: str) -> str:
    """The page with its hand-written part (or ``intro`` for a new page) and ``reference`` below the marker."""
    old = path.read_text() if path.exists() else intro
    head = old[:old.index(MARKER)] if MARKER in old else old
    return head.rstrip("\n") + "\n\n" + MARKER + "\n\n" + reference


def pages() -> dict[Path, str]:
    # What the CLI reads from the environment must not reach its defaults on the page.
    for name in ("SHMOOZE_TOKEN", "SHMOOZE_SETTINGS"):
        os.environ.pop(name, None)
    os.environ["SHMOOZE_URL"] = "http://127.0.0.1:8080/"
    return {SETTINGS_PAGE: page(SETTINGS_PAGE, SETTINGS_INTRO, settings_reference()),
            CLI_PAGE: page(CLI_PAGE, CLI_INTRO, cli_reference())}


def main(argv: list[str]) -> int:
    stale = []
    for path, text in pages().items():
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        sys.stderr.write(f"not up to date: {', '.join(stale)}: run python3 scripts/docs_reference.py\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
