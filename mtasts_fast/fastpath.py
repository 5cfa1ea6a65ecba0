"""The request path of a cached answer: framing, lookup, counting in one call.

A Postfix relay asks the same few thousand next-hops over and over, and
almost every request is answered from a cached, fresh policy whose reply
the responder has already rendered (the ``memo`` path). For those requests
the work is: frame the netstring, find the rendered reply, check it is still
the one the responder would give, count the lookup, write the reply. A
:class:`FastPathPy` (or its compiled twin in ``_fastpath.pyx``) does all of
it in one call, for every complete netstring of the bytes the transport
delivered, and returns the replies as one bytes object for one
``transport.write``.

What it holds
    A *hit* per request payload (``<map name> <raw key>``, the whole
    netstring payload): the framed reply, the counter cell the lookup is
    counted in, and the conditions under which the responder would give
    that reply, counted in that cell, again. The responder records a hit
    (``put``) when it has just answered a request along such a path; the
    fast path replays it while its conditions hold. A hit is never
    extended: when one fails, the request goes to the responder, which
    answers it as it always did and records a new hit if it can.

When a hit holds (every check is the responder's own, in the same terms)
    - ``stamp``: the id of the cache's last commit (``cache.lmdb.commit_counter``)
      when the responder read the entry (and the DANE state), and no commit
      happened while it read them. While the id is unchanged, nobody wrote
      anything, so the responder's memoised read would return the same
      entry and state objects, whose rendered replies it uses: a write by
      any process (a fetch, a revalidation, a DANE evaluation, a purge)
      changes the id and makes every stamped hit fail once.
    - ``now < expires_at`` (the policy is unexpired, RFC 8461 §3.2) and not
      ``now - checked_at > grace`` (past ``cache_grace`` the responder
      answers and also revalidates in the background, RFC 8461 §3.3: the
      fast path leaves that to it).
    - ``now < dane_expires_at`` when the answer consulted a DANE state
      (RFC 8461 §2): an expired state is answered by the responder, which
      re-evaluates it.
    A hit without a stamp (``stamp=None``) depends on nothing that can
    change while the responder lives: a local override's reply and a key
    that can have no policy (an IP literal, a ``.parent`` probe). The
    responder empties the table (``clear``) when anything else it decides
    with changes in process: DANE detection switched on or off by the
    DNSSEC probe, the cache's memo dropping entries (the next read would
    decode a new entry, and count ``cache`` instead of ``memo``; a DANE
    state decoded anew gives the same reply, counted alike). A reload
    builds a new responder, hence a new table: a changed override file, zone
    or ``cache_grace`` is never seen through an old hit.

Framing
    Only what the netstring parser would accept as a complete netstring is
    served: ``<digits>:<payload>,`` with at most MAX_LENGTH_DIGITS digits
    (leading zeros allowed) and a length within MAX_PAYLOAD. At the first
    netstring that is incomplete, malformed, unknown or whose hit fails,
    :meth:`serve` stops and returns None; :attr:`unserved` then holds the
    replies to the netstrings before it and :attr:`offset` where it starts.
    The caller writes those replies and feeds the rest to its parser, whose
    state is idle at a netstring boundary, exactly as if it had been fed the
    whole chunk: results, errors and ordering are the parser's and the
    responder's. The caller only calls :meth:`serve` while no reply is owed
    and its parser holds no partial netstring.

Counting
    A served request is counted exactly as the responder counts it: one
    increment of the hit's cell in the worker's counters (``metrics``), and
    for a local override one more in the responder's ``override_counts``.

Recording under frequent commits
    Every commit ends every stamped hit, and each revalidation, fetch or DANE
    evaluation of any domain commits. When commits come faster than the
    requests of a payload, its hit is always stale by the time it is asked
    again, and recording it again is work for nothing (about 0.2 µs on the
    responder's path). So :meth:`~FastPathPy.record` backs off: a hit
    replaced before it served anything is recorded again only after
    1, 3, 7, then 15 skipped answers (BACKOFF_LIMIT); one that served resets
    it. Which requests the fast path serves changes; what any request is
    answered and how it is counted does not.

The name at the bottom is rebound to the compiled twin unless
``MTASTS_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Protocol

from mtasts_fast import _compat
from mtasts_fast.memo import make_room
from mtasts_fast.netstring import MAX_LENGTH_DIGITS, MAX_PAYLOAD

if TYPE_CHECKING:
    from mtasts_fast._fastpath import FastPathC as _FastPathC
    from mtasts_fast.counters import Cells

__all__ = [
    "BACKOFF_LIMIT",
    "HIT_LIMIT",
    "FastPath",
    "FastPathC",
    "FastPathPy",
    "StampSource",
]

#: Skipped recordings of a payload whose hits keep going unused, at most.
BACKOFF_LIMIT = 15
_BACKOFF_STEPS = BACKOFF_LIMIT.bit_length()  # 1, 3, 7, 15 skipped

#: Hits kept per responder (one per distinct payload, about 180 bytes each);
#: when full, the oldest eighth goes (memo.make_room). Past the LMDB memo's
#: 10 000 domains the memo's own turnover empties the table anyway; the
#: bound is for keys without a policy and overrides, so that a client
#: sending endless distinct ones cannot grow a worker by more than ~3 MiB.
HIT_LIMIT = 16_384


class StampSource(Protocol):
    """Where the id of the cache's last commit is read (``cache.lmdb.commit_counter``)."""

    def value(self) -> int | None: ...

    def location(self) -> tuple[object, int, int] | None:
        """A buffer of native 64-bit words and the indexes of the two to take the larger of."""


class _Timed(Protocol):
    """What :meth:`FastPathPy.record` reads of a cache entry."""

    expires_at: float
    checked_at: float


class _Expiring(Protocol):
    """What :meth:`FastPathPy.record` reads of a DANE state."""

    expires_at: float


class _Hit:
    """One payload's reply and when it holds (the module doc)."""

    __slots__ = (
        "cell",
        "checked_at",
        "dane_expires_at",
        "expires_at",
        "kind",
        "reply",
        "served",
        "skip",
        "stamp",
        "wasted",
    )

    def __init__(
        self,
        reply: bytes,
        cell: int,
        stamp: int | None,
        expires_at: float,
        checked_at: float,
        dane_expires_at: float,
        kind: str | None,
    ) -> None:
        self.reply = reply
        self.cell = cell
        self.stamp = stamp
        self.expires_at = expires_at
        self.checked_at = checked_at
        self.dane_expires_at = dane_expires_at
        self.kind = kind
        #: Requests served since recorded; recordings replaced unused in a row;
        #: recordings still to skip (see "Recording under frequent commits").
        self.served = 0
        self.wasted = 0
        self.skip = 0


class FastPathPy:
    """Replies the responder vouches for, served straight from the bytes received (pure Python)."""

    __slots__ = (
        "_clock",
        "_count",
        "_grace",
        "_hits",
        "_kinds",
        "_limit",
        "_stamps",
        "offset",
        "unserved",
    )

    def __init__(
        self,
        cells: Cells,
        override_counts: MutableMapping[str, int],
        *,
        grace: float,
        clock: Callable[[], float] = time.time,
        limit: int = HIT_LIMIT,
    ) -> None:
        """``cells``: the worker's counters (``count`` adds one to a cell);
        ``override_counts``: the responder's counts by override kind;
        ``grace``: ``cache_grace``; ``clock``: the responder's wall clock."""
        self._count = cells.inc
        self._kinds = override_counts
        self._grace = float(grace)
        self._clock = clock
        self._limit = limit
        self._hits: dict[bytes, _Hit] = {}
        self._stamps: StampSource | None = None
        #: After :meth:`serve` returned None: the replies it answered first.
        self.unserved = b""
        #: After :meth:`serve` returned None: where the bytes it did not serve begin.
        self.offset = 0

    def __len__(self) -> int:
        return len(self._hits)

    @property
    def stamps(self) -> StampSource | None:
        """Where stamps are read (None: only hits without a stamp are kept)."""
        return self._stamps

    def set_stamps(self, stamps: StampSource | None) -> None:
        """Read stamps from ``stamps`` from now on; forgets every hit."""
        self._stamps = stamps
        self._hits.clear()

    def clear(self) -> None:
        """Forget every hit (the next request of each payload goes to the responder)."""
        self._hits.clear()

    def stamp(self) -> int | None:
        """The stamp now (the cache's last commit id), or None without a source."""
        stamps = self._stamps
        return None if stamps is None else stamps.value()

    def put(
        self,
        payload: bytes,
        reply: bytes,
        cell: int,
        stamp: int | None = None,
        expires_at: float = 0.0,
        checked_at: float = 0.0,
        dane_expires_at: float = float("inf"),
        kind: str | None = None,
    ) -> None:
        """Serve ``reply`` for ``payload``, counted in ``cell`` (and ``kind``), while it holds."""
        hits = self._hits
        if payload not in hits:
            make_room(hits, self._limit)
        hits[payload] = _Hit(reply, cell, stamp, expires_at, checked_at, dane_expires_at, kind)

    def record(
        self,
        payload: bytes,
        reply: bytes,
        cell: int,
        stamp: int | None,
        entry: _Timed,
        state: _Expiring | None,
        kind: str | None,
    ) -> None:
        """:meth:`put` the responder's answer from ``entry`` (and DANE ``state``) read under
        ``stamp``, if the stamp is still the same now (no commit came during the reads)."""
        if stamp is None:
            return
        hit = self._hits.get(payload)
        wasted = 0
        if hit is not None and hit.stamp is not None and not hit.served:
            if hit.skip:
                hit.skip -= 1
                return
            wasted = min(hit.wasted + 1, _BACKOFF_STEPS)
        if self.stamp() != stamp:
            return
        dane_expires_at = float("inf") if state is None else state.expires_at
        self.put(
            payload, reply, cell, stamp, entry.expires_at, entry.checked_at, dane_expires_at, kind
        )
        if wasted:
            hit = self._hits[payload]
            hit.wasted = wasted
            hit.skip = min((1 << wasted) - 1, BACKOFF_LIMIT)

    def reply_for(self, payload: bytes) -> bytes | None:
        """The reply recorded for ``payload``, whether or not it holds now (for tests)."""
        hit = self._hits.get(payload)
        return None if hit is None else hit.reply

    def serve(self, data: bytes) -> bytes | None:
        """The replies to every netstring of ``data``, or None (see "Framing")."""
        hits = self._hits
        end = len(data)
        pos = 0
        replies: list[bytes] = []
        stamp: int | None = None
        stamp_read = False
        now = 0.0
        now_read = False
        while pos < end:
            colon = data.find(b":", pos, pos + MAX_LENGTH_DIGITS + 1)
            if colon <= pos:
                break
            digits = data[pos:colon]
            if not digits.isdigit():
                break
            length = int(digits)
            start = colon + 1
            stop = start + length
            if length > MAX_PAYLOAD or stop >= end or data[stop] != 0x2C:  # ","
                break
            hit = hits.get(data[start:stop])
            if hit is None:
                break
            if hit.stamp is not None:
                if not stamp_read:
                    stamps = self._stamps
                    stamp = None if stamps is None else stamps.value()
                    stamp_read = True
                if hit.stamp != stamp:
                    break
                if not now_read:
                    now = self._clock()
                    now_read = True
                if not (
                    now < hit.expires_at
                    and not now - hit.checked_at > self._grace
                    and now < hit.dane_expires_at
                ):
                    break
            try:
                self._count(hit.cell)
            except IndexError:
                break  # counters released (the worker stops): nothing is served uncounted
            hit.served += 1
            if hit.kind is not None:
                self._kinds[hit.kind] += 1
            replies.append(hit.reply)
            pos = stop + 1
        if pos == end:
            return replies[0] if len(replies) == 1 else b"".join(replies)
        self.unserved = b"".join(replies)
        self.offset = pos
        return None


FastPathC: type[_FastPathC] | None = None
FastPath: type[FastPathPy] | type[_FastPathC] = FastPathPy

if not _compat.NO_EXTENSIONS:
    try:
        from mtasts_fast import _fastpath
    except ImportError:
        if _compat.REQUIRE_EXTENSIONS:
            raise
    else:
        FastPathC = FastPath = _fastpath.FastPathC
