#!/usr/bin/env python3
"""The in-memory launchers of ``seeding.py``, without ``run.py``'s imports.

    launch.py _launch-ours --config CFG --seed FILE [DAEMON ARGS]
    launch.py _launch-peer --config CFG --dns ADDR [--seed FILE] [DAEMON ARGS]

``run.py _launch-ours`` / ``_launch-peer`` do the same, but ``run.py``
imports the whole benchmark (its reports, ``urllib.request``, ``statistics``,
``sqlite3``...) into the daemon's process first: the supervisor, and every
worker forked from it, then carried about 4 MiB that the daemon itself never
uses, counted in the resident memory the benchmarks report. ``daemons.py``
starts the in-memory pairing through this file, so that the daemon's
process holds only the daemon and ``seeding.py``'s standard-library modules.
"""

from __future__ import annotations

import sys

import seeding

if __name__ == "__main__":
    sys.exit(seeding.launch_main(sys.argv[1], sys.argv[2:]))
