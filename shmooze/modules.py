"""Module-side helper, re-exported from the standalone ``shmooze_module``.

``from shmooze.modules import JSONParentPoller`` keeps working for code
written against the original shmooze package (and ``shmooze.lib.packet`` for
its answer helpers).
"""

import os as _os
import sys as _sys

try:
    import shmooze_module as _helper  # noqa: F401 - installed with shmooze
except ImportError:  # a source checkout without pymodule on sys.path
    _sys.path.append(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "pymodule"))

from shmooze_module import *  # noqa: F403
from shmooze_module import (
    DEFAULT_COMMANDS,
    MAX_LINE_LENGTH,
    CommandStreamClosed,
    JSONParentPoller,
    LineTooLongError,
    Module,
    ParentConnection,
    ProtocolError,
    assert_success,
    command,
    error,
    good,
    packet,
    parse_argv,
)

__all__ = [
    "DEFAULT_COMMANDS",
    "MAX_LINE_LENGTH",
    "CommandStreamClosed",
    "JSONParentPoller",
    "LineTooLongError",
    "Module",
    "ParentConnection",
    "ProtocolError",
    "assert_success",
    "command",
    "error",
    "good",
    "packet",
    "parse_argv",
]
