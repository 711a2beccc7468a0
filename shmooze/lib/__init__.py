"""Names the original framework kept under ``shmooze.lib`` (``shmooze.lib.packet``)."""
