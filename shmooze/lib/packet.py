"""Command answers as the original framework built and checked them.

``import shmooze.lib.packet as packet`` keeps working for modules and services ported from it:
``packet.good(result)``, ``packet.error(message)`` and ``packet.assert_success(answer)`` (which
returns the answer's result, or raises with its error). The same functions are in the
stand-alone module helper (``shmooze_module``) and in ``shmooze.modules``.
"""

from shmooze.modules import assert_success, error, good

__all__ = ["good", "error", "assert_success"]
