"""Every default value of the daemon, in one place.

Plain constants only, so the config loader, the CLI, the docs and the tests all
read the same numbers. Where a key also exists in postfix-mta-sts-resolver
1.5.1, the default is the same as there (that is what makes this daemon a
drop-in replacement); the comment says so, or says why a new key has the
value it has.
"""

from __future__ import annotations

import os

# --- Files -----------------------------------------------------------------

# Same path as postfix-mta-sts-resolver, so existing installations keep working.
CONFIG_PATH = "/etc/mta-sts-daemon.yml"

# --- Listener ----------------------------------------------------------------

# Loopback only: the map answers anyone who can connect. Same as the old daemon.
HOST = "127.0.0.1"
# The port every Postfix `smtp_tls_policy_maps = socketmap:inet:...` line in the
# wild already names. Same as the old daemon.
PORT = 8461
# Unix socket path, permission bits, owner and group: unset means listen on
# TCP (HOST, PORT) instead. `mode` unset leaves the bits the umask gives.
PATH: str | None = None
MODE: int | None = None
OWNER: str | None = None
GROUP: str | None = None
# SO_REUSEPORT on: several workers (or an old and a new instance during a
# restart) share the port. Same as the old daemon.
REUSE_PORT = True
# asyncio's default of 100 overflows when hundreds of smtp(8) processes connect
# at once (a queue run after an outage); the kernel caps it at somaxconn anyway.
BACKLOG = 1024
# Postfix's socketmap client drops a connection after 10 s idle and recycles it
# after 100 s; waiting longer than both means the daemon never closes a
# connection Postfix still wants (a close mid-lookup is a Postfix warning).
IDLE_TIMEOUT = 300.0
# Per worker. Far above what one Postfix instance opens (one per smtp(8)
# process), low enough that a runaway client cannot exhaust file descriptors.
MAX_CONNECTIONS = 10_000
# Largest netstring payload accepted. Postfix never sends a key this long
# (a domain is at most 253 octets); anything larger is an attack or a bug.
MAX_PAYLOAD = 10_000
# Seconds granted to open connections at shutdown before they are cut.
# Same as the old daemon.
SHUTDOWN_TIMEOUT = 20.0

# --- Policy cache ------------------------------------------------------------

# Age (seconds) below which a cached policy is served with no DNS check.
# Same as the old daemon.
CACHE_GRACE = 60.0
# The old daemon defaulted to `internal`; ours is the shared, persistent LMDB
# file (DESIGN.md §5): every worker serves what any worker fetched, and a
# restart starts warm. A config that names `type: internal` keeps it. The
# daemon creates LMDB_PATH's directory (owned by the -u user) when missing.
CACHE_TYPE = "lmdb"
# internal: LRU capacity in entries. Same as the old daemon.
INTERNAL_CACHE_SIZE = 10_000
# lmdb: where the shared, memory-mapped cache file lives (the directory the old
# daemon's Docker image and packages already create for its sqlite file).
LMDB_PATH = "/var/lib/mta-sts/cache.lmdb"
# lmdb: the map's maximum size. Address space only, not disk or RAM: the file
# grows as it fills. 1 GiB holds a few million policies.
LMDB_MAP_SIZE = 1 << 30
# lmdb: entries kept before expired and least recently used ones are evicted.
LMDB_MAX_ENTRIES = 1_000_000
# sqlite: connection pool size. The old daemon uses the CPU count too.
SQLITE_THREADS = os.cpu_count() or 1
# sqlite: seconds to wait for a pooled connection or a database lock.
# Same as the old daemon.
SQLITE_TIMEOUT = 5.0
# redis / redis_sentinel: socket timeouts handed to redis-py unless the config
# sets them. Same as the old daemon; redis-py's own default is to wait forever.
REDIS_SOCKET_TIMEOUT = 5.0
REDIS_SOCKET_CONNECT_TIMEOUT = 5.0
# postgres: seconds to wait for a connection from the pool. Same as the old daemon.
POSTGRES_TIMEOUT = 5.0

# --- Zones (per socketmap name) ---------------------------------------------

# Treat `mode: testing` as enforce. Off: RFC 8461 §5 says testing must not
# change delivery. Same as the old daemon.
STRICT_TESTING = False
# Seconds for the TXT lookup and, separately, for the whole HTTPS fetch.
# Same as the old daemon.
ZONE_TIMEOUT = 4.0
# Append `servername=hostname` (needs Postfix >= 3.4). Same as the old daemon.
REQUIRE_SNI = True
# Append TLSRPT attributes (needs Postfix >= 3.10). Same as the old daemon.
TLSRPT = False
# The reply to a `mode: testing` policy in a TLSRPT zone: "notfound" answers
# NOTFOUND (no attributes: Postfix keeps its own level, so nothing is ever
# lowered); "may", "encrypt" or "dane" name that Postfix level and add the
# TLSRPT attributes, so the sessions are reported under the STS policy. Only an
# operator knows which level is not below their own smtp_tls_security_level.
TLSRPT_TESTING_LEVEL = "notfound"

# Which domains get a DANE answer (RFC 8461 §2, RFC 7672; DESIGN.md §7):
# "precedence" evaluates DANE for every domain whose answer would otherwise be
# an MTA-STS policy, so that the policy never overrides DANE; "all" for every
# domain (postfix-tlspol's behaviour); "off" never (the old daemon's answers,
# which do not honour RFC 8461 §2). The default honours the RFC with no change
# to a postfix-mta-sts-resolver config file.
DANE = "precedence"

# --- Proactive policy fetching ---------------------------------------------

# All four are the old daemon's defaults.
PROACTIVE_ENABLED = False
# Seconds between passes: daily, the refresh rate RFC 8461 §3.3 suggests.
PROACTIVE_INTERVAL = 86400
PROACTIVE_CONCURRENCY = 100
# A pass skips entries younger than interval / grace_ratio.
PROACTIVE_GRACE_RATIO = 2.0
# New key: a pass spreads its fetches evenly over this many seconds, each at a
# random moment in its share, so that a daily pass over a large cache is not
# one burst. None means a tenth of the interval; at most half the interval.
PROACTIVE_JITTER: float | None = None
# Entries whose policy expired this long ago are dropped by a pass instead of
# being fetched again: nobody mailed the domain for a whole max_age.
PROACTIVE_DROP_AFTER = 86400.0

# --- Fetch discipline (new keys; DESIGN.md §4 "negative caching") -------------

# Seconds a "no MTA-STS policy" answer is remembered before the TXT record is
# asked again. Short, so a domain that starts publishing a policy is seen soon.
NEGATIVE_TTL = 300.0
# A failed fetch (DNS error, HTTPS down, invalid policy) is retried after 60 s,
# then after twice as long each time, up to this many seconds. RFC 8461 §3.3
# suggests retrying a failed refresh about every five minutes.
FETCH_BACKOFF_MIN = 60.0
FETCH_BACKOFF_MAX = 300.0
# Fetches in flight per worker. Lookups beyond it wait for a slot (within the
# zone timeout): a burst of mail to a thousand new domains must not become a
# thousand simultaneous TLS handshakes.
MAX_CONCURRENT_FETCHES = 100

# --- DANE (RFC 7672; DESIGN.md §7) ---------------------------------------------

# The name whose answer must carry the AD bit for the resolver to count as
# validating (probe.py). The root zone is signed and every validating resolver
# holds its trust anchor, so "." works everywhere a real resolver is used; a
# private trust anchor (a test tree, an internal root) needs its own name.
DNSSEC_PROBE_NAME = "."
# Seconds between two probes: hourly notices a resolver that stopped (or
# started) validating soon enough, at one query an hour per worker.
DNSSEC_PROBE_INTERVAL = 3600.0
# Seconds before probing again when the resolver did not answer the probe at
# all (it may be starting up alongside the daemon).
DNSSEC_PROBE_RETRY = 60.0
# A DANE state is kept for the smallest TTL of the answers it was built from,
# clamped to [DANE_TTL_MIN, DANE_TTL_MAX] seconds. The floor stops a zone
# with TTLs of a few seconds from making every lookup a re-evaluation (60 s,
# like cache_grace for an MTA-STS TXT id). The ceiling bounds how long a
# change goes unseen: a domain that withdraws its TLSA records while we still
# answer dane-only would have its mail deferred by Postfix ("no TLSA records
# found"), so an hour, whatever TTLs the zone publishes. Revalidation runs in
# the background, so neither number ever makes a lookup wait.
DANE_TTL_MIN = 60.0
DANE_TTL_MAX = 3600.0
# A stored state past its expiry is still answered (and re-evaluated in the
# background) for this long; older than that, a lookup waits for a new
# evaluation (bounded by the zone timeout). A day: a worker that was idle
# overnight answers at once, one that was stopped for a week does not trust
# what it knew.
DANE_STALE_LIMIT = 86400.0
# MX hosts evaluated per domain, in preference order (three queries each).
# Postfix tries at most smtp_mx_address_limit addresses (default 5), so hosts
# beyond ten never see a Postfix with default settings, while a hostile zone
# with thousands of MX records costs at most 30 queries. A domain with more
# hosts can get `dane` (Postfix applies DANE host by host), never `dane-only`.
DANE_MAX_MX_HOSTS = 10
# A `temp` state (DNSSEC validation failed) is retried after FETCH_BACKOFF_MIN
# seconds, doubling up to fetch_backoff_max: the policy fetch's discipline.

# --- Network ---------------------------------------------------------------

# DNS servers: empty means the system resolver configuration (resolv.conf).
NAMESERVERS: tuple[str, ...] = ()
# CA bundle for the policy HTTPS fetch: None means the system trust store,
# which honours SSL_CERT_FILE / SSL_CERT_DIR.
CA_FILE: str | None = None

# --- Local control ----------------------------------------------------------

# A YAML file of per-domain overrides (overrides.py); unset means none.
POLICY_OVERRIDES: str | None = None

# --- Monitoring (new keys; DESIGN.md §9) -----------------------------------------

# The Prometheus endpoint is off unless the file has a `metrics:` section;
# when it names a port without a host, it listens on loopback only, like
# the socketmap port: the counts are nobody else's business.
METRICS_HOST = "127.0.0.1"
# Log lines: "text" (the format of every earlier release) or "json" (one
# object per line, for log shippers).
LOG_FORMAT = "text"
LOG_FORMATS = ("text", "json")

# Worker processes sharing the listening port (SO_REUSEPORT) and the cache.
# One per CPU by default: a worker is single-threaded and CPU-bound on hits.
MAX_WORKERS = 256


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
