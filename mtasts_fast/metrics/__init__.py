"""Prometheus metrics summed over every worker, and the health endpoint (DESIGN.md §9).

How the parts fit:

- :mod:`.catalogue`: every metric, its help text, labels and label values;
- :mod:`.layout`: where each series lives in a worker's region, per configuration;
- :mod:`.region`: a worker start's shared memory (why shared, anonymous memory);
- :mod:`.worker`: what a worker counts, one call per event (the hot path's
  is one compiled increment, :mod:`mtasts_fast.counters`);
- :mod:`.monitor`: a worker's heartbeat, backend probe and cache counts;
- :mod:`.collector`: the supervisor's totals over live and exited workers,
  health, and the exposition;
- :mod:`.exposition`: the text format;
- :mod:`.http` and :mod:`.listener`: ``/metrics`` and ``/healthz`` from the
  supervisor's ``poll()`` loop (why there), on a listener of their own.

Importing the package imports none of them.
"""
