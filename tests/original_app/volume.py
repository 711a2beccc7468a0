"""The volume service, as the original's services were written (started with ``python -m``)."""

import signal
import sqlite3

import shmooze.lib.packet as packet
import shmooze.lib.service as service
import shmooze.settings as settings


class Volume(service.JSONCommandProcessor, service.Service):
    port = settings.ports["volume"]
    queue_port = settings.ports["queue"]

    def __init__(self):
        print("Volume started.")
        self.vol = 50
        self.sets = 0
        self.lock = service.Lock()
        self.set_event = service.Event()
        # A connection bound to this thread, as the original's services made them: the loop runs here.
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE sets (vol INTEGER)")
        super(Volume, self).__init__()  # noqa: UP008 - as the original was written

    @service.coroutine
    def get_vol(self):
        raise service.Return({"vol": self.vol})

    @service.coroutine
    def set_vol(self, vol):
        if not 0 <= vol <= 100:
            raise Exception("Volume out of range")
        with (yield self.lock.acquire()):
            yield service.sleep(0.01)  # the original's services waited on hardware here
            self.vol = vol
            self.sets += 1
            self.db.execute("INSERT INTO sets VALUES (?)", (vol,))
        event, self.set_event = self.set_event, service.Event()
        event.set()
        raise service.Return({"vol": self.vol})

    @service.coroutine
    def announce(self, text):
        # Another service over json_query: the whole answer comes back, as in the original.
        answer = yield service.json_query("localhost", self.queue_port,
                                          {"cmd": "add", "args": {"type": "text", "args": {"text": text}}})
        added = packet.assert_success(answer)
        queue = yield service.json_query("localhost", self.queue_port, {"cmd": "queue"})
        raise service.Return({"uid": added["uid"], "queue_length": len(packet.assert_success(queue)),
                              "vol": self.vol})

    @service.coroutine
    def both(self):
        # Two coroutines at once: a list of futures is waited for as one.
        results = yield [self.get_vol(), service.json_query("localhost", self.queue_port, {"cmd": "modules_available"})]
        raise service.Return({"vol": results[0]["vol"], "types": packet.assert_success(results[1])})

    @service.coroutine
    def next_set(self):
        # Waits for another command (set_vol) while the loop runs it.
        yield self.set_event.wait()
        raise service.Return({"vol": self.vol})

    @service.coroutine
    def history(self):
        raise service.Return([vol for (vol,) in self.db.execute("SELECT vol FROM sets")])

    commands = {
        "history": history,
        "next_set": next_set,
        "get_vol": get_vol,
        "set_vol": set_vol,
        "announce": announce,
        "both": both,
    }


vol = Volume()


def shutdown_handler(signum, frame):
    print("Received signal, attempting graceful shutdown...")
    service.ioloop.add_callback_from_signal(service.ioloop.stop)


signal.signal(signal.SIGTERM, shutdown_handler)
signal.signal(signal.SIGINT, shutdown_handler)

service.ioloop.start()
