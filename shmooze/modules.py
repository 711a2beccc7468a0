"""Module-side helper, re-exported from the standalone ``shmooze_module``.

``from shmooze.modules import JSONParentPoller`` keeps working for code
written against the original shmooze package.
"""

try:
    from shmooze_module import *  # noqa: F401,F403
    from shmooze_module import (  # noqa: F401
        DEFAULT_COMMANDS,
        MAX_LINE_LENGTH,
        JSONParentPoller,
        LineTooLongError,
        Module,
        ParentConnection,
        ProtocolError,
        command,
        parse_argv,
    )
except ImportError:  # running from a source checkout without pymodule on sys.path
    import os as _os
    import sys as _sys

    _sys.path.append(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "pymodule"))
    from shmooze_module import *  # noqa: F401,F403
    from shmooze_module import (  # noqa: F401
        DEFAULT_COMMANDS,
        MAX_LINE_LENGTH,
        JSONParentPoller,
        LineTooLongError,
        Module,
        ParentConnection,
        ProtocolError,
        command,
        parse_argv,
    )

__all__ = [
    "DEFAULT_COMMANDS",
    "MAX_LINE_LENGTH",
    "JSONParentPoller",
    "LineTooLongError",
    "Module",
    "ParentConnection",
    "ProtocolError",
    "command",
    "parse_argv",
]
