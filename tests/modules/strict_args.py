"""A module that reads ``msg["args"]`` on every command line, as modules in other languages
written from the original framework do: a line without ``args`` is a failure (stdlib only)."""

import json
import socket
import sys

host, cmd_port, update_port = sys.argv[-3], int(sys.argv[-2]), int(sys.argv[-1])
cmd = socket.create_connection((host, cmd_port))
upd = socket.create_connection((host, update_port))
for line in cmd.makefile("rb"):
    msg = json.loads(line)
    if "args" in msg:
        answer = {"success": True, "result": {"cmd": msg["cmd"], "args": msg["args"]}}
    else:
        answer = {"success": False, "error": f"no args in {line.decode().strip()}"}
    cmd.sendall((json.dumps(answer) + "\n").encode())
    if msg["cmd"] == "rm":
        break
