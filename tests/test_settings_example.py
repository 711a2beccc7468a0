"""The settings registry (shmooze/registry.py) declares every key the framework reads;
settings.example.json is written from it; the settings tables in docs/ name exactly its keys.

The keys read are found in the code itself (shmooze/), so the test keeps holding as keys are added:
a key is read as ``<...>settings.get("key")``, ``<...>settings["key"]`` or ``<...>settings.key`` on
anything whose name ends in ``settings``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re

from shmooze import registry
from shmooze import settings as settings_module
from tests.helpers import ROOT

EXAMPLE = ROOT / "settings.example.json"
#: The pages with settings tables (docs/settings.md, docs/safety.md); the generated reference is headed name.
PAGES = sorted((ROOT / "docs").glob("*.md"))
#: Typed attribute to key name (``public_keys`` reads ``public``: ``public()`` serves them).
ATTRIBUTES = {attr: key.name for attr, key in vars(registry.Declared).items() if isinstance(key, registry.Key)}
# What a Settings object or the settings module offers besides keys: settings.get(...), settings.current(), ...
NOT_KEYS = {name for name in dir(settings_module.Settings) if not name.startswith("__") and name not in ATTRIBUTES} | {
    name for name in vars(settings_module) if not name.startswith("__")} | {"path"}
#: Keys of the application's own that the framework reads (the dashboard shows app_name when public).
APPLICATION_KEYS = {"app_name"}


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
            found.add(ATTRIBUTES.get(node.attr, node.attr))
    return found


def code_keys() -> dict[str, str]:
    """Every settings key the framework reads, with one file that reads it."""
    keys: dict[str, str] = {}
    for path in sorted((ROOT / "shmooze").rglob("*.py")):
        for key in keys_read(ast.parse(path.read_text(), str(path))):
            keys.setdefault(key, str(path.relative_to(ROOT)))
    return keys


def test_the_scanner_finds_the_ways_code_reads_keys():
    tree = ast.parse("settings.get('a')\nself.settings['b']\napp_settings.c\nsettings.current()\n"
                     "other.get('x')\nself.cfg.settings.y\nsettings.get(name)\nsettings.public_keys\n")
    assert keys_read(tree) == {"a", "b", "c", "public"}


def test_every_key_the_code_reads_is_declared():
    keys = code_keys()
    assert {"ports", "services", "open_commands", "gateway_connections",
            "gateway_stop_timeout", "stop_timeout", "run_path", "durability"} <= set(keys)  # the scanner sees them
    undeclared = {key: where for key, where in keys.items() if key not in registry.KEYS and key not in APPLICATION_KEYS}
    assert not undeclared, f"keys read by the code but not declared in shmooze/registry.py: {undeclared}"


def _generator():
    spec = importlib.util.spec_from_file_location("example_settings", ROOT / "scripts" / "example_settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_is_written_from_the_registry():
    assert EXAMPLE.read_text() == _generator().example_text(), \
        "settings.example.json is not up to date: run python3 scripts/example_settings.py"
    example = json.loads(EXAMPLE.read_text())
    assert set(example) == set(registry.KEYS) | APPLICATION_KEYS
    defaults = {name: value for name, value in example.items() if name in registry.KEYS
                and registry.KEYS[name].example == registry.KEYS[name].default}
    assert {"forward_timeout", "gateway_connections", "stop_timeout", "ws_max_in_flight"} <= set(defaults)
    loaded = settings_module.read(EXAMPLE)  # and it is a valid settings file
    for name, value in defaults.items():
        assert value == loaded.get(name), name  # showing each default as it is


def _readme_tables() -> set[str]:
    """Key names in the first column of the settings tables in docs/ (those headed ``key`` or ``setting``)."""
    named: set[str] = set()
    in_table = False
    for line in "\n".join(page.read_text() for page in PAGES).splitlines():
        if not line.startswith("|"):
            in_table = False
        elif re.match(r"\|\s*(key|setting)\s*\|", line):
            in_table = True
        elif in_table:
            named.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return named


def test_the_readme_tables_name_exactly_the_declared_keys():
    documented = _readme_tables()
    assert {"ports", "max_body_bytes", "ws_max_in_flight"} <= documented  # the parser sees the tables
    undeclared = sorted(documented - set(registry.KEYS) - APPLICATION_KEYS)
    assert not undeclared, f"keys in a settings table in docs/ that shmooze/registry.py does not declare: {undeclared}"
    missing = sorted(set(registry.KEYS) - documented)
    assert not missing, f"declared keys without a line in a settings table in docs/: {missing}"
