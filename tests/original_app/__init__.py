"""An application written for the original (Tornado) shmooze, with Python 3 changes only.

A small office radio: a queue of texts (``queues.py``: module classes with ``TYPE_STRING`` and
``process``, ``shmooze.queue.Queue(modules, backgrounds, log_path)``), a volume service
(``volume.py``: a ``JSONCommandProcessor`` service with generator coroutines, a ``Lock``,
``json_query`` to the queue, started as a program with ``python -m``), a "top" service
(``top.py``: reads the original's ``queue_log`` table with ``shmooze.lib.database``, named in the
settings' ``services``), a module (``modules/text.py``, on ``JSONParentPoller``) and a page
(``static/index.html``, on the original's globals). tests/test_original_app.py runs it.
"""
