"""settings.example.json lists every key the framework reads, and the README says what each one means.

The keys are found in the code itself (shmooze/), so the test keeps holding as keys are added: a
key is read as ``<...>settings.get("key")``, ``<...>settings["key"]`` or ``<...>settings.key`` on
anything whose name ends in ``settings``, or is one of ``shmooze.settings.DEFAULTS``.
"""

from __future__ import annotations

import ast
import json
import re

from shmooze import settings as settings_module
from tests.helpers import ROOT

EXAMPLE = ROOT / "settings.example.json"
README = ROOT / "README.md"
# What a Settings object or the settings module offers besides keys: settings.get(...), settings.current(), ...
NOT_KEYS = {name for name in dir(settings_module.Settings) if not name.startswith("__")} | {
    name for name in vars(settings_module) if not name.startswith("__")} | {"path"}


def _ends_in_settings(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith("settings") and not (isinstance(node, ast.Attribute) and _is_cfg(node.value))


def _is_cfg(node: ast.AST) -> bool:
    """gunicorn's ``self.cfg.settings`` is gunicorn's own table, not ours."""
    return isinstance(node, ast.Attribute) and node.attr == "cfg"


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keys_read(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and _ends_in_settings(node.func.value) and node.args and _string(node.args[0])):
            found.add(_string(node.args[0]))
        elif isinstance(node, ast.Subscript) and _ends_in_settings(node.value) and _string(node.slice):
            found.add(_string(node.slice))
        elif isinstance(node, ast.Attribute) and _ends_in_settings(node.value) and node.attr not in NOT_KEYS \
                and not node.attr.startswith("_"):
            found.add(node.attr)
    return found


def code_keys() -> dict[str, str]:
    """Every settings key the framework reads, with one file that reads it."""
    keys = {key: "shmooze/settings.py (DEFAULTS)" for key in settings_module.DEFAULTS}
    for path in sorted((ROOT / "shmooze").rglob("*.py")):
        for key in keys_read(ast.parse(path.read_text(), str(path))):
            keys.setdefault(key, str(path.relative_to(ROOT)))
    return keys


def test_the_scanner_finds_the_ways_code_reads_keys():
    tree = ast.parse("settings.get('a')\nself.settings['b']\napp_settings.c\nsettings.current()\n"
                     "other.get('x')\nself.cfg.settings.y\nsettings.get(name)\n")
    assert keys_read(tree) == {"a", "b", "c"}


def test_the_example_lists_every_key_the_code_reads():
    keys = code_keys()
    assert {"ports", "services", "service_host", "open_commands", "gateway_connections",
            "gateway_stop_timeout", "stop_timeout", "run_path"} <= set(keys)  # the scanner sees them
    example = json.loads(EXAMPLE.read_text())
    missing = {key: where for key, where in keys.items() if key not in example}
    assert not missing, f"keys read by the code but not in settings.example.json: {missing}"
    settings_module.read(EXAMPLE)  # and it is a valid settings file


def test_the_readme_says_what_each_key_means():
    text = README.read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    documented = {name for row in table_rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    keys = set(json.loads(EXAMPLE.read_text())) | set(code_keys())
    missing = sorted(keys - documented)
    assert not missing, f"keys without a line in a README settings table: {missing}"
