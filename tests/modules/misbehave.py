"""A deliberately misbehaving shmooze module for service tests (stdlib only).

Usage: ``python misbehave.py [FLAGS...] HOST CMD_PORT UPDATE_PORT``

Without flags it behaves: answers init/play/suspend/rm, ``do_echo`` returns
its args, ``do_slow`` sleeps ``args["seconds"]`` (default 0) then answers,
writes ``{"pid": os.getpid()}`` at init, exits after ``rm`` and on EOF of
the command stream.  It never reads the service's update answers.

Flags (combine freely unless noted):
  --no-connect            never connect; sleep until killed
  --connect-update-first  connect the update stream before the command stream
  --no-init-answer        connect, read commands, never answer anything
  --init-error            answer init with success false (then keep serving)
  --ignore-rm             answer rm but keep running; ignore command-stream EOF
  --ignore-term           like --ignore-rm, and SIGTERM is ignored (SIGKILL only)
  --freeze-after-init     answer init, then stop reading/answering; sleep
  --slow-command SECONDS  do_slow sleeps SECONDS before answering
  --crash-mid-command     do_crash exits with status 3 without answering
  --garbage               after init: a non-JSON update line, then a valid
                          set_parameters {"garbage_sent": true}
  --flood N               after init: N set_parameters {"flood": i} updates
                          (i = 1..N) then {"flood_done": N}, from a writer
                          thread, never reading answers; commands keep being
                          answered meanwhile
  --child-ignores-term    after init: start a child ignoring SIGTERM that
                          sleeps forever; set {"child_pid": pid}
  --record                after each command (before answering) set
                          {"log": [every cmd name received so far]}
  --exit-after SECONDS    SECONDS after init: send {"cmd": "rm"} on the update
                          stream and exit 0
  --escape                at init with args {"marker": M, "clear_env": bool}: leave
                          a grandchild behind (double fork + setsid, ignores
                          SIGTERM, M in its command line, with clear_env an empty
                          environment)
  --crash-in-init         exit with status 4 on init without answering
  --answer-then-leave     do_leave answers, then sends {"cmd": "rm"} on the
                          update stream and exits
"""

import argparse
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time


def parse(argv):
    """Parse flags; the last three argv entries are HOST CMD_PORT UPDATE_PORT."""
    if len(argv) < 4:
        sys.stderr.write("usage: misbehave.py [FLAGS] HOST CMD_PORT UPDATE_PORT\n")
        sys.exit(2)
    p = argparse.ArgumentParser(prog="misbehave.py")
    p.add_argument("--no-connect", action="store_true")
    p.add_argument("--connect-update-first", action="store_true")
    p.add_argument("--no-init-answer", action="store_true")
    p.add_argument("--init-error", action="store_true")
    p.add_argument("--ignore-rm", action="store_true")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--freeze-after-init", action="store_true")
    p.add_argument("--slow-command", type=float, default=None, metavar="SECONDS")
    p.add_argument("--crash-mid-command", action="store_true")
    p.add_argument("--garbage", action="store_true")
    p.add_argument("--flood", type=int, default=0, metavar="N")
    p.add_argument("--child-ignores-term", action="store_true")
    p.add_argument("--record", action="store_true")
    p.add_argument("--exit-after", type=float, default=None, metavar="SECONDS")
    p.add_argument("--escape", action="store_true")
    p.add_argument("--crash-in-init", action="store_true")
    p.add_argument("--answer-then-leave", action="store_true")
    opts = p.parse_args(argv[1:-3])
    opts.host, opts.cmd_port, opts.update_port = argv[-3], int(argv[-2]), int(argv[-1])
    return opts


def sleep_forever():
    """Block until a signal kills us."""
    while True:
        time.sleep(3600)


def dumps(obj):
    """Compact JSON line as bytes."""
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


class UpdateWriter:
    """Writes update lines from a daemon thread; never reads answers."""

    def __init__(self, sock):
        self.sock = sock
        self.q = queue.Queue()
        t = threading.Thread(target=self._run, daemon=True)
        t.start()

    def _run(self):
        while True:
            data, done = self.q.get()
            try:
                self.sock.sendall(data)
            except OSError:
                pass
            if done is not None:
                done.set()

    def send_raw(self, data, wait=False):
        """Queue raw bytes; optionally wait (bounded) until they were written."""
        done = threading.Event() if wait else None
        self.q.put((data, done))
        if done is not None:
            done.wait(10)

    def send(self, cmd, args=None, wait=False):
        """Queue one update command."""
        msg = {"cmd": cmd}
        if args is not None:
            msg["args"] = args
        self.send_raw(dumps(msg), wait)

    def set_parameters(self, params, wait=False):
        self.send("set_parameters", {"parameters": params}, wait)


class Misbehave:
    """The module's command loop."""

    def __init__(self, opts):
        self.opts = opts
        self.log = []
        self.buf = b""
        self.exit_at = None
        self.connect()

    def connect(self):
        o = self.opts

        def conn(port):
            s = socket.create_connection((o.host, port), timeout=30)
            s.settimeout(None)
            return s

        if o.connect_update_first:
            self.upd_sock = conn(o.update_port)
            self.cmd_sock = conn(o.cmd_port)
        else:
            self.cmd_sock = conn(o.cmd_port)
            self.upd_sock = conn(o.update_port)
        self.updates = UpdateWriter(self.upd_sock)

    def read_command(self, timeout=None):
        """Return the next parsed command, None at EOF, or False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                r, _, _ = select.select([self.cmd_sock], [], [], remaining)
                if not r:
                    return False
            try:
                data = self.cmd_sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line.decode("utf-8"))
        except ValueError:
            return {"cmd": None, "args": {}, "bad": True}
        if not isinstance(msg, dict):
            return {"cmd": None, "args": {}, "bad": True}
        args = msg.get("args") or {}
        return {"cmd": msg.get("cmd"), "args": args if isinstance(args, dict) else {}}

    def answer(self, ok=True, result=None, error=None):
        msg = {"success": ok}
        if ok and result is not None:
            msg["result"] = result
        if not ok:
            msg["error"] = error or "error"
        try:
            self.cmd_sock.sendall(dumps(msg))
        except OSError:
            self.on_eof()

    def on_eof(self):
        if self.opts.ignore_rm or self.opts.ignore_term:
            sleep_forever()
        sys.exit(0)

    def after_init(self):
        o = self.opts
        if o.garbage:
            self.updates.send_raw(b"this is {not json\n")
            self.updates.set_parameters({"garbage_sent": True})
        if o.child_ignores_term:
            code = ("import signal, time\n"
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "print('ready', flush=True)\n"
                    "while True: time.sleep(3600)\n")
            child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            # only publish the pid once SIGTERM is really ignored
            child.stdout.readline()
            child.stdout.close()
            self.updates.set_parameters({"child_pid": child.pid})
        if o.flood:
            def flood():
                for i in range(1, o.flood + 1):
                    self.updates.set_parameters({"flood": i})
                self.updates.set_parameters({"flood_done": o.flood})
            threading.Thread(target=flood, daemon=True).start()
        if o.exit_after is not None:
            self.exit_at = time.monotonic() + o.exit_after

    def handle(self, cmd, args):
        """Answer one command according to the flags."""
        o = self.opts
        self.log.append(cmd)
        if o.record:
            self.updates.set_parameters({"log": list(self.log)}, wait=True)
        if cmd == "init" and o.crash_in_init:
            sys.stderr.write("crashing in init\n")
            os._exit(4)
        if cmd == "init" and o.escape and args.get("marker"):
            escape(str(args["marker"]), bool(args.get("clear_env")))
        if cmd == "init":
            self.updates.set_parameters({"pid": os.getpid()}, wait=True)
            if o.init_error:
                self.answer(False, error="init failed (--init-error)")
            else:
                self.answer(True)
            self.after_init()
            if o.freeze_after_init:
                sleep_forever()
        elif cmd in ("play", "suspend"):
            self.answer(True)
        elif cmd == "rm":
            self.answer(True)
            if o.ignore_rm or o.ignore_term:
                sleep_forever()
            sys.exit(0)
        elif cmd == "do_echo":
            self.answer(True, result=args)
        elif cmd == "do_slow":
            secs = o.slow_command if o.slow_command is not None else float(args.get("seconds", 0))
            time.sleep(secs)
            self.answer(True, result={"slept": secs})
        elif cmd == "do_leave" and o.answer_then_leave:
            self.answer(True, result="bye")
            self.updates.send("rm", wait=True)
            os._exit(0)
        elif cmd == "do_crash" and o.crash_mid_command:
            os._exit(3)
        else:
            self.answer(False, error=f"unknown command: {cmd}")

    def loop(self):
        o = self.opts
        while True:
            timeout = None
            if self.exit_at is not None:
                timeout = max(0.0, self.exit_at - time.monotonic())
            msg = self.read_command(timeout)
            if msg is False:
                self.updates.send("rm", wait=True)
                sys.exit(0)
            if msg is None:
                self.on_eof()
                continue
            if o.no_init_answer:
                continue
            if msg.get("bad"):
                self.answer(False, error="invalid command line")
                continue
            self.handle(msg["cmd"], msg["args"])


ESCAPEE = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(10 ** 6)\n"


def escape(marker, clear_env):
    """Leave a grandchild behind: out of our group and session, SIGTERM ignored, marker in argv."""
    argv = ["env", "-i"] if clear_env else []
    argv += [sys.executable, "-c", ESCAPEE, marker]
    # sh starts it in the background and exits: the grandchild is orphaned.
    subprocess.run(["/bin/sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 &', "sh"] + argv,
                   start_new_session=True, check=True)


def main(argv=None):
    opts = parse(sys.argv if argv is None else argv)
    if opts.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if opts.no_connect:
        sleep_forever()
    Misbehave(opts).loop()


if __name__ == "__main__":
    main()
