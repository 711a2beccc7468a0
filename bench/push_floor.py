"""The push benchmark's floor, in its own process: long-poll a service's ``changes`` straight at its port.

Usage: ``python push_floor.py PORT SECONDS START END``; prints one JSON object on stdout.
"""

import json
import sys

from push_wire import long_poll

if __name__ == "__main__":
    port, seconds, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    json.dump(long_poll(port, seconds, start, end), sys.stdout)
    sys.stdout.write("\n")
