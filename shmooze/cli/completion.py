"""Shell completion for ``shmooze`` and ``shmz``: ``shmooze completion bash`` prints a bash script.

Put ``eval "$(shmooze completion bash)"`` in ``~/.bashrc`` (or save the output in
``/etc/bash_completion.d/shmooze``). The script is made from the argument parsers themselves, so it
offers every subcommand and option there is; for ``shmz`` it asks ``shmz --complete`` for the
gateway's services and a service's commands (with a short timeout: a stopped application offers
none). A generated script needs nothing installed and runs no Python on each ``shmooze`` start, unlike
argcomplete's hook.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Options of ``shmz`` that take a value (their value is not a service or a command).
SHMZ_VALUE_OPTIONS = ("--url", "--timeout", "--token")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """A parser's long options (and short ones that have no long form), and the choices of its positionals."""
    words = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of them
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            words += list(action.choices)
        words += [s for s in action.option_strings if s.startswith("--") or len(action.option_strings) == 1]
    return sorted(words)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - nor a public type for it
            return dict(action.choices)
    return {}


def bash(shmooze_parser: argparse.ArgumentParser) -> str:
    """The bash completion script of both commands."""
    subs = _subparsers(shmooze_parser)
    cases = "".join(f"        {name}) words=\"{' '.join(_options(sub))}\" ;;\n" for name, sub in sorted(subs.items()))
    top = " ".join(sorted(subs) + _options(shmooze_parser))
    return f"""# bash completion of shmooze and shmz (from `shmooze completion bash`)
_shmooze() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" sub="" w words
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in -*) ;; *) sub="$w"; break ;; esac
    done
    case "$sub" in
        "") words="{top}" ;;
{cases}    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_shmz() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in {"|".join(SHMZ_VALUE_OPTIONS)}) return ;; esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "--url --timeout --token --json --version --help" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -W "$(shmz --complete "${{COMP_WORDS[@]:1:COMP_CWORD-1}}" 2>/dev/null)" -- "$cur"))
}}
complete -o default -F _shmooze shmooze
complete -o default -F _shmz shmz
"""


def shmz_candidates(client: Any, positional: list[str]) -> list[str]:
    """What may come after ``shmz``'s words so far (options left out): a service (or ``logs``, ``watch``),
    then that service's commands (after ``watch``: a service again); nothing after that."""
    from shmooze.errors import ShmoozeError

    try:
        if not positional:
            return ["logs", "watch", *client.service_names(timeout=1.0)]
        if len(positional) == 1 and positional[0] == "watch":
            return list(client.service_names(timeout=1.0))
        if len(positional) == 1 and positional[0] != "logs":
            return ["commands", "help", *sorted(client.service(positional[0]).call("commands", timeout=1.0))]
    except (ShmoozeError, OSError, KeyError, TypeError):
        pass  # nothing to offer from a gateway that does not answer
    return []
