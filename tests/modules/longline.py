"""A module that sends one over-long line on each of its streams (stdlib only), for the line tests.

Usage: ``python longline.py MAX_LINE HOST CMD_PORT UPDATE_PORT``

After ``init`` it sends an update line longer than MAX_LINE in two pieces (the second after a
pause, so the service reads them apart) followed by a good ``set_parameters`` line, reads the
two answers, and reports them as its ``answers`` parameter. On stdout it prints a 200 kB line (more
than a pipe holds, so the service reads it in pieces) and then ``after the long line``.
"""

import json
import socket
import sys
import time


def send(sock, obj):
    sock.sendall((json.dumps(obj) + "\n").encode())


def read_line(f):
    line = f.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)


def main(argv):
    max_line = int(argv[1])
    host, cmd_port, update_port = argv[-3], int(argv[-2]), int(argv[-1])
    cmd = socket.create_connection((host, cmd_port))
    upd = socket.create_connection((host, update_port))
    cmd_in, upd_in = cmd.makefile("rb"), upd.makefile("rb")
    assert read_line(cmd_in)["cmd"] == "init"
    send(cmd, {"success": True})
    upd.sendall(b"x" * (max_line + 100))
    time.sleep(0.2)
    upd.sendall(b"x" * 50 + b"\n")
    send(upd, {"cmd": "set_parameters", "args": {"parameters": {"after": 1}}})
    answers = [read_line(upd_in), read_line(upd_in)]
    send(upd, {"cmd": "set_parameters", "args": {"parameters": {"answers": answers}}})
    sys.stdout.write("y" * 200000 + "\n")
    sys.stdout.write("after the long line\n")
    sys.stdout.flush()
    while True:
        request = read_line(cmd_in)
        send(cmd, {"success": True})
        if request["cmd"] == "rm":
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
