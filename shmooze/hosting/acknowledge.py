"""Acknowledged means kept: a command that changes something is answered once its change is kept.

:func:`answer_when_kept` runs a command, then waits for what it recorded in the journal and the
command log: written and synced to the disk (durability ``fsync``, the default) or written to the
kernel (``write``). Its waits share one write and one sync with every command that changed something
meanwhile (group commit; :class:`shmooze.hosting.batchwriter.BatchWriter`); a command log that keeps
its rows in the journal (:meth:`CommandLog.keep_in`) is kept by the journal's sync. A success whose change cannot be
kept is answered an error: a success answer is a promise.
"""

from __future__ import annotations

from typing import Any, Callable

from shmooze import protocol
from shmooze.hosting.cmdlog import CommandLog
from shmooze.hosting.journal import FSYNC, Journal


def answer_when_kept(run: Callable[[], dict[str, Any]], command: str, service: str, journal: Journal | None,
                     command_log: CommandLog | None, durability: str) -> dict[str, Any]:
    """``run()``'s answer to ``command``, once what it recorded in ``journal`` and ``command_log`` is kept."""
    if journal is None and command_log is None:
        return run()  # nothing is kept: the answer is the promise of nothing more
    since = journal.tickets if journal is not None else 0
    log_since = command_log.tickets if command_log is not None else 0
    answer = run()
    if journal is not None and command_log is not None and durability == FSYNC:
        command_log.start_writing()  # its commit's sync beside the journal's, not after it
    problem = journal.sync(since) if journal is not None else None
    carried = command_log is not None and command_log.journal is not None and command_log.journal is journal
    log_problem = command_log.sync(log_since) if command_log is not None and not carried else None  # (carried:
    # its rows are the journal's, kept by the sync above)
    if problem is not None and answer.get("success"):
        return protocol.error(f"{command} was done but is not kept ({problem}): a restart of {service} "
                              "before it is written would undo it")
    if log_problem is not None and answer.get("success"):  # (its row is kept in memory, written later)
        return protocol.error(f"{command} was done but its command-log row is not kept ({log_problem})")
    return answer
