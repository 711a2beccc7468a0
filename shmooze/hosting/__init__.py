"""Services that run modules: a module table, placement policies, lifecycle events and their
subscribers (the journal, the command log, change events, figures, restart policies)."""
