"""The queue: the original's module classes and constructor (named in the settings' ``services``)."""

import shmooze.queue
import shmooze.settings as settings


class Text:
    TYPE_STRING = "text"
    process = ["python", "-m", "tests.original_app.modules.text"]


class Backdrop:
    TYPE_STRING = "backdrop"
    process = ["python", "-m", "tests.original_app.modules.text"]


modules = [Text]
backgrounds = [Backdrop]


def make_queue():
    return shmooze.queue.Queue(modules, backgrounds, settings.log_database_path)
