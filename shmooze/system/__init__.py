"""The operating-system layer: /proc, cgroups, containment and limits, the stop ladder, peers of loopback
sockets, private folders, the orphan guard, disk health, and whether gevent runs this process's I/O."""
