"""Every metric the daemon exports: name, type, help text, labels and label values.

Names follow the Prometheus conventions: the ``mtasts_`` prefix, ``_total``
on counters, base units (seconds, bytes). The label values are fixed here,
so each series has its place in a worker's shared region (layout.py) before
anything is counted, and every series is exported from the start (a counter
that appears only when it first moves makes ``rate()`` miss its first
increase).

Lookup *paths* (how a lookup was answered):

- ``memo``: the reply memoised on the cached entry, no decoding or rendering;
- ``cache``: a cached entry read and its reply rendered (an entry just
  fetched by another worker, a new zone, or a backend without synchronous
  reads: sqlite, redis, postgres);
- ``fetch``: no usable entry: the lookup waited for a fetch (shared with
  concurrent lookups of the domain);
- ``backoff``: answered at once because the domain is negatively cached or
  backing off after a failed fetch (RFC 8461 §3.3);
- ``override``, ``dane``: answered by a local policy override or by the DANE
  decision (DESIGN.md §7, §8);
- ``invalid-key``: not a name that can have a policy (an IP literal, a
  ``.parent`` probe, junk): ``NOTFOUND`` at once;
- ``error``: an internal error: ``TEMP``.

Lookup *outcomes* are what Postfix was told: ``policy`` (``OK ...``),
``no-policy`` (``NOTFOUND``, also for ``testing`` and ``none`` policies)
and ``temp`` (``TEMP``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtasts_fast.dane.state import DECISIONS

__all__ = [
    "ALL",
    "COUNTER",
    "DEFAULT_ZONE_LABEL",
    "FETCH_BUCKETS",
    "GAUGE",
    "HISTOGRAM",
    "Metric",
]

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

#: The ``zone`` label of lookups through a map name that names no zone.
DEFAULT_ZONE_LABEL = "default_zone"

OUTCOMES = ("policy", "no-policy", "temp")
PATHS = ("memo", "cache", "fetch", "backoff", "override", "dane", "invalid-key", "error")
#: What a fetch found: a policy, the known id again, no policy, or an RFC 8460
#: §4.3 result type (dns-error and dns-timeout for a failed TXT lookup).
FETCH_RESULTS = (
    "policy",
    "not-changed",
    "no-policy",
    "dns-error",
    "dns-timeout",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)
#: Why a fetch was not made: the domain backs off (a record another worker
#: or host wrote), or no fetch slot came free within the zone timeout.
SKIP_REASONS = ("backoff", "no-slot")
PASS_RESULTS = ("completed", "aborted")
PROACTIVE_ACTIONS = ("due", "refreshed", "changed", "kept", "dropped")
DANE_DECISIONS = DECISIONS
RELOAD_RESULTS = ("applied", "unchanged", "invalid", "aborted")
WORKER_STATES = ("answering", "starting", "unresponsive", "stopping")
#: Upper bounds of the fetch duration buckets, in seconds (+Inf is implied).
#: A fetch is bounded by the zone timeout, 4 s by default.
FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


def _counter(name: str, help_text: str, *labels: str) -> Metric:
    return Metric(name, COUNTER, help_text, labels)


def _gauge(name: str, help_text: str, *labels: str) -> Metric:
    return Metric(name, GAUGE, help_text, labels)


# -- counted by the workers, in their shared regions ------------------------------------------

LOOKUPS = _counter(
    "mtasts_lookups_total",
    "Socketmap lookups answered, by zone, outcome (what Postfix was told) and path "
    "(how the answer was found).",
    "zone",
    "outcome",
    "path",
)
FETCHES = _counter(
    "mtasts_fetches_total",
    "Policy fetches (TXT lookup, then HTTPS unless the id is known), by result: a policy, "
    "the known id, no policy, or the RFC 8460 result type of a failure.",
    "result",
)
FETCH_DURATION = Metric(
    "mtasts_fetch_duration_seconds",
    HISTOGRAM,
    "Time a policy fetch took, DNS and HTTPS together, slot waits excluded.",
)
FETCHES_SKIPPED = _counter(
    "mtasts_fetches_skipped_total",
    "Fetches not made: the domain backs off after a recent failure recorded in the cache, "
    "or no fetch slot came free within the zone timeout (max_concurrent_fetches).",
    "reason",
)
FETCH_SLOT_WAITS = _counter(
    "mtasts_fetch_slot_waits_total",
    "Fetches that had to wait for a slot (max_concurrent_fetches in flight).",
)
FETCH_COALESCED = _counter(
    "mtasts_fetch_coalesced_total",
    "Fetch requests that joined a fetch of the same domain already in flight.",
)
BACKEND_ERRORS = _counter(
    "mtasts_cache_backend_errors_total",
    "Failed calls to the cache backend (lookups, writes and the health probe).",
    "backend",
)
BACKEND_OUTAGES = _counter(
    "mtasts_cache_backend_outages_total",
    "Times a worker found the cache backend failing after it had worked.",
    "backend",
)
CONNECTIONS_ACCEPTED = _counter(
    "mtasts_connections_accepted_total", "Client connections accepted (refused ones excluded)."
)
CONNECTIONS_REFUSED = _counter(
    "mtasts_connections_refused_total",
    "Client connections closed at once because a worker had max_connections open.",
)
CONNECTIONS_IDLE_CLOSED = _counter(
    "mtasts_connections_idle_closed_total",
    "Client connections closed after idle_timeout (or aborted: the client did not read).",
)
BAD_NETSTRINGS = _counter(
    "mtasts_bad_netstrings_total",
    "Connections closed because the client sent a malformed or oversized netstring.",
)
CONNECTIONS_OPEN = _gauge("mtasts_connections_open", "Client connections open now.")
PROACTIVE_PASSES = _counter(
    "mtasts_proactive_passes_total",
    "Proactive refresh passes run by this daemon, by result (aborted: the lease was lost).",
    "result",
)
PROACTIVE_POLICIES = _counter(
    "mtasts_proactive_policies_total",
    "Cached policies seen by proactive passes: due for a refresh, refreshed (body fetched), "
    "changed, kept as they were (fetch failed or backing off), dropped (expired long ago).",
    "action",
)
DANE_DECISIONS_TOTAL = _counter(
    "mtasts_dane_decisions_total",
    "DANE evaluations of a domain (RFC 7672), by decision.",
    "decision",
)

#: The worker metrics, in the order they are laid out and exported.
WORKER = (
    LOOKUPS,
    FETCHES,
    FETCH_DURATION,
    FETCHES_SKIPPED,
    FETCH_SLOT_WAITS,
    FETCH_COALESCED,
    BACKEND_ERRORS,
    BACKEND_OUTAGES,
    CONNECTIONS_ACCEPTED,
    CONNECTIONS_REFUSED,
    CONNECTIONS_IDLE_CLOSED,
    BAD_NETSTRINGS,
    CONNECTIONS_OPEN,
    PROACTIVE_PASSES,
    PROACTIVE_POLICIES,
    DANE_DECISIONS_TOTAL,
)

# -- kept by the supervisor ---------------------------------------------------------------------

WORKER_STARTS = _counter("mtasts_worker_starts_total", "Worker processes started.")
WORKER_CRASHES = _counter(
    "mtasts_worker_crashes_total",
    "Worker processes that ended without being asked to (crashed, killed, or failed to start).",
)
WORKER_RESTARTS = _counter(
    "mtasts_worker_restarts_total", "Worker processes started to replace one that crashed."
)
WORKERS = _gauge(
    "mtasts_workers",
    "Worker processes now, by state: answering lookups, starting, unresponsive (said it "
    "answers, but its heartbeat stopped), or stopping.",
    "state",
)
RELOADS = _counter(
    "mtasts_reloads_total",
    "Configuration reloads (SIGHUP), by result: applied (every worker replaced), "
    "unchanged, invalid (file rejected), aborted (new workers could not start).",
    "result",
)
LAST_RELOAD_OK = _gauge(
    "mtasts_config_last_reload_successful",
    "1 unless the last reload was rejected or aborted.",
)
CACHE_ENTRIES = _gauge(
    "mtasts_cache_entries", "Policies held by the cache backend (as last counted).", "backend"
)
CACHE_FAILURE_RECORDS = _gauge(
    "mtasts_cache_failure_records",
    "Fetch-failure and no-policy records held by the cache backend (as last counted).",
    "backend",
)
CACHE_SIZE = _gauge(
    "mtasts_cache_size_bytes",
    "Size of the cache: file size on disk (lmdb, sqlite), memory used by our keys (redis), "
    "size of our tables (postgres); absent for internal.",
    "backend",
)
CACHE_STATS_TIME = _gauge(
    "mtasts_cache_stats_timestamp_seconds",
    "When the cache gauges were last counted (Unix time).",
    "backend",
)
BACKEND_UP = _gauge(
    "mtasts_cache_backend_up",
    "1 while an answering worker reaches the cache backend (probed every few seconds).",
    "backend",
)
HEALTHY = _gauge(
    "mtasts_healthy",
    "1 while /healthz answers 200: a worker answers lookups and reaches the cache backend.",
)
BUILD_INFO = _gauge(
    "mtasts_build_info",
    "Always 1; the labels tell the version, the compiled extensions in use and Python's version.",
    "version",
    "extensions",
    "python",
)
START_TIME = _gauge(
    "mtasts_start_time_seconds", "When the daemon (its supervisor) started, in Unix time."
)

SUPERVISOR = (
    WORKER_STARTS,
    WORKER_CRASHES,
    WORKER_RESTARTS,
    WORKERS,
    RELOADS,
    LAST_RELOAD_OK,
    CACHE_ENTRIES,
    CACHE_FAILURE_RECORDS,
    CACHE_SIZE,
    CACHE_STATS_TIME,
    BACKEND_UP,
    HEALTHY,
    BUILD_INFO,
    START_TIME,
)

#: Every metric family, in export order.
ALL = WORKER + SUPERVISOR
