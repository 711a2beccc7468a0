"""The "top" service: reads the original's command log (``queue_log``) for the most played texts.

Named in the settings' ``services`` (``"top": "tests.original_app.top:Top"``): its module is imported
by ``shmooze serve``, where ``ioloop.start()`` below returns at once.
"""

import json

import shmooze.lib.database as database
import shmooze.lib.service as service
import shmooze.settings as settings


class Top(service.JSONCommandProcessor, service.Service):
    port = settings.ports["top"]

    def __init__(self):
        self.db = database.Database()  # the settings' log_database_path; made in this thread, used on the loop's
        super(Top, self).__init__()  # noqa: UP008 - as the original was written

    @service.coroutine
    def top_played(self, limit=10):
        # Modules that got "play" (namespace queue-module), counted by the text of their "init".
        rows = self.db.execute("""
            SELECT init.input_json AS init_json, COUNT(*) AS plays
            FROM queue_log AS play JOIN queue_log AS init
              ON init.uid = play.uid AND init.namespace = 'queue-module'
                 AND json_extract(init.input_json, '$.cmd') = 'init'
            WHERE play.namespace = 'queue-module' AND json_extract(play.input_json, '$.cmd') = 'play'
              AND json_extract(play.output_json, '$.success') = 1
            GROUP BY init_json ORDER BY plays DESC LIMIT :limit""", limit=limit)
        if rows is None:  # no queue_log yet (a fresh database): nothing played
            raise service.Return([])
        raise service.Return([{"text": json.loads(r["init_json"])["args"]["text"], "plays": r["plays"]}
                              for r in rows.fetchall()])

    @service.coroutine
    def failures(self):
        rows = self.db.execute("SELECT namespace, input_json, output_json FROM queue_log "
                               "WHERE json_extract(output_json, '$.success') = 0 ORDER BY pk")
        raise service.Return([database.row_dict(r) for r in rows.fetchall()] if rows is not None else [])

    commands = {
        "top_played": top_played,
        "failures": failures,
    }


top = Top()
service.ioloop.start()
