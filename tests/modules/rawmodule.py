"""A module shell for the module-protocol fuzz tests: the test process speaks for it (stdlib only).

Usage: ``python rawmodule.py REPORT_PORT HOST CMD_PORT UPDATE_PORT``

It connects to ``127.0.0.1:REPORT_PORT`` (a listener of the test) and writes one line,
``HOST CMD_PORT UPDATE_PORT PID``; the test then connects to the service's two ports
itself and writes whatever bytes its case needs. This process only stands for the
module's process: it exits when the report connection closes, or on SIGTERM.
"""

import os
import socket
import sys


def main(argv):
    report_port, host, cmd_port, update_port = argv[1:5]
    report = socket.create_connection(("127.0.0.1", int(report_port)), timeout=10)
    report.sendall((f"{host} {cmd_port} {update_port} {os.getpid()}\n").encode())
    report.settimeout(None)
    while True:
        try:
            if not report.recv(4096):
                return 0
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
