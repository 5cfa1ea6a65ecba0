"""The shared, memory-mapped LMDB cache (``cache.type: lmdb``, the default).

Every worker on a host opens the same LMDB environment (DESIGN.md §2, §5), so a
policy fetched (or a DANE state evaluated) by one worker is served by all of
them and survives restarts. Readers never wait: a hit reads the memory map in
place, and a memoised hit opens no transaction at all while nothing has been
committed. Writers take turns on LMDB's inter-process writer lock, one thread
per process. A ``kill -9`` of any process leaves a consistent file. The size
is bounded by ``max_entries`` and by ``map_size``, by evicting expired and
least recently checked entries.

One module per part, each documenting its own:

- ``layout``: the named databases, their keys and values, the time keys of
  the indexes.
- ``environment``: the files, their modes, the durability flags, opening the
  environment; growing the map and adopting one another process grew.
- ``commit_counter``: the id of the last commit, read in place from LMDB's
  meta pages.
- ``reads``: the memoised read of one entry and the batches of a scan.
- ``writes``: one attempt at a write transaction (eviction when the map is
  full), and the bodies that put, delete and purge entries.
- ``eviction``: the expiry and checked indexes, eviction and pruning.
- ``failures``: fetch-failure records and their retry index.
- ``dane``: DANE states, their memoised read and their expiry index.
- ``meta``: the proactive-refresh timestamp and leases.
- ``stats``: the counts and checked range for ``mta-sts-cache stats``.
- ``group_commit``: the writes asked for while the writer is busy, queued
  and committed together.
- ``store``: ``LmdbCache``, the cache interface over all of it, and its
  writer thread.
"""

from __future__ import annotations

from mtasts_fast.cache.lmdb import commit_counter, layout
from mtasts_fast.cache.lmdb.store import LmdbCache

__all__ = ["LmdbCache"]

# The tests import these two under the names they had in the single module.
_CommitCounter = commit_counter.CommitCounter
_time_key = layout.time_key
