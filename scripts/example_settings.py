#!/usr/bin/env python3
"""Write settings.example.json from the settings registry (shmooze/registry.py): every declared key,
with its default (or the illustration its declaration gives), and one key of an application's own.

    python3 scripts/example_settings.py          rewrite settings.example.json
    python3 scripts/example_settings.py --check  exit 1 if it is not up to date

tests/test_settings_example.py checks that the committed file is what this writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shmooze.registry import KEYS

EXAMPLE = ROOT / "settings.example.json"
#: Keys of the application's own, shown after ``public`` (which serves this one).
APPLICATION = {"app_name": "my shmooze application"}
#: A blank line before each of these, for the eye (as in the registry).
GROUPS = {"wsgi_prefix", "host", "access_token", "service_keepalive"}


def example_text() -> str:
    entries: dict[str, object] = {}
    for name, key in KEYS.items():
        entries[name] = key.example
        if name == "public":
            entries.update(APPLICATION)
    lines = [("\n" if name in GROUPS else "") + f"  {json.dumps(name)}: {json.dumps(value)}"
             for name, value in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str]) -> int:
    text = example_text()
    if "--check" in argv:
        if EXAMPLE.read_text() != text:
            sys.stderr.write(f"{EXAMPLE} is not up to date: run python3 scripts/example_settings.py\n")
            return 1
        return 0
    EXAMPLE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
