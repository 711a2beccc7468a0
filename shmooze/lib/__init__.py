"""Names the original framework kept under ``shmooze.lib``: ``packet`` (for modules and services),
``service`` (its services on the new ones), ``database``, ``cmdlog`` and ``bot``."""
