"""A queue in a few lines of Python, without a settings file: ``python examples/standalone_queue.py``.

Then: ``shmz --url http://127.0.0.1:8091/ queue add type=countdown 'args={"seconds": 3}'``
(or POST to http://127.0.0.1:8091/ directly). Ctrl-C stops it and every module.
"""

from pathlib import Path

from shmooze.moduletype import python_module
from shmooze.queue import Queue
from shmooze.serve import serve_factory

MODULES = Path(__file__).resolve().parent / "jukebox" / "modules"
TYPES = [python_module("countdown", str(MODULES / "countdown.py")), python_module("text", str(MODULES / "speaker.py"))]

if __name__ == "__main__":
    serve_factory(lambda: Queue(TYPES), port=8091, name="queue")
