"""The test world: a DNS server and the HTTPS policy hosts, on 127.0.0.0/8 only.

Everything runs in one background thread with its own asyncio event loop,
started once per test session, so sync tests, async tests on any loop and
daemon subprocesses can all use it::

    world = World()
    world.start()            # WorldUnavailable if 127.0.0.x:443 cannot be bound
    world.add_catalogue()    # the fixed test domains, see CATALOGUE below
    ...                      # config: nameservers: [world.nameserver]; ca_file: world.ca_file
    world.stop()

Every known ``<domain>`` gets ``A mta-sts.<domain> -> world.https_ip`` (unless
``https=False``), TXT records at ``_mta-sts.<domain>`` and a site on the HTTPS
server for ``mta-sts.<domain>``. Unknown names are NXDOMAIN; unknown HTTP hosts
get a 404 with a certificate for ``default.invalid``.

CATALOGUE (``.loc`` domains; the expected fetch outcome is in brackets):

- The old daemon's fixtures (research/peer.md §5.1): good [POLICY enforce,
  mx mail.loc, max_age 86400, id 20180907T090909], bad-record1..3, no-record
  (NXDOMAIN), no-data (NODATA) [NO_POLICY], blackhole (TXT never answered)
  [FAILED dns-timeout], bad-policy1 (garbage), bad-policy2 (no mx),
  bad-policy5 (max_age xxx), bad-policy7 (no mode), bad-policy8 (mode doubt)
  [FAILED sts-policy-invalid], bad-policy3 (text/html), bad-policy4 (404)
  [FAILED sts-policy-fetch-error], bad-policy6 (max_age 31557601) [POLICY,
  max_age clamped to 31557600, one warning], bad-cert1 (untrusted CA), bad-cert2
  (certificate only for bad-cert2.loc) [FAILED sts-webpki-invalid], valid-none
  [POLICY none], testing [POLICY testing], fast-expire [POLICY max_age 1],
  chunked-overlength, static-overlength [FAILED sts-policy-fetch-error].
- Discovery extras: two-records, two-records-one-broken, long-id, bad-id,
  empty-id, non-ascii-txt, cname-nodata [NO_POLICY]; other-txt [POLICY id
  withothers], non-ascii-other [POLICY id asciiok], split-txt [POLICY id
  splittxt01], big-txt (answer > 512 bytes, TCP) [POLICY id bigtxt], cname
  (TXT behind a CNAME) [POLICY id viacname]; servfail, refused, cname-loop
  [FAILED dns-error].
- HTTPS extras: expired-cert, self-signed [FAILED sts-webpki-invalid];
  redirect (302 to good.loc's policy), gzip (Content-Encoding: gzip),
  no-content-type, eof-overlength (no length, body until close), over-64k
  (65537 bytes), slow-https (answers after 30 s), no-https-host (no A record
  for mta-sts.) [FAILED sts-policy-fetch-error]; charset (text/plain;
  charset=utf-8), cache-headers (no-store, expired), eof-body (no length, body
  until close), exactly-64k (65536 bytes) [POLICY].
- Policy extras: crlf [POLICY], dup-keys [POLICY enforce, max_age 86400, two
  warnings], ip-mx [POLICY mx (mail.loc,), two warnings], huge-max-age
  (9999999999) [POLICY clamped], invalid-mx (enforce, only unusable mx),
  non-utf8 [FAILED sts-policy-invalid]; xn--bcher-kva.loc [POLICY enforce,
  mx mail.xn--bcher-kva.loc].
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import itertools
import logging
import random
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from tests.servers.dns import DnsServer, Zone
from tests.servers.https import Certificates, CertKind, Framing, HttpsServer, Site

__all__ = [
    "BIG_BODY_PAD",
    "DEFAULT_ID",
    "GOOD_POLICY",
    "World",
    "WorldUnavailable",
]

log = logging.getLogger("tests.world")
_T = TypeVar("_T")


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
DEFAULT_ID = "20180907T090909"
DEFAULT_TXT = f"v=STSv1;id={DEFAULT_ID};"
GOOD_POLICY = "version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: 86400"
BIG_BODY_PAD = "a" * (64 * 2049)  # the old daemon's overlength padding

TxtSpec = Sequence[str | bytes | Sequence[str | bytes]]


class WorldUnavailable(RuntimeError):
    """The world cannot start here (e.g. binding port 443 needs root)."""


def _txt_record(entry: str | bytes | Sequence[str | bytes]) -> list[bytes]:
    """One TXT record as its character-strings (a long single string is split)."""
    if isinstance(entry, str | bytes):
        raw = entry.encode() if isinstance(entry, str) else entry
        return [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return [part.encode() if isinstance(part, str) else part for part in entry]


class World:
    """DNS + HTTPS fixtures on loopback, served from one background thread."""

    def __init__(self) -> None:
        self.zone = Zone()
        self._dir = tempfile.mkdtemp(prefix="mtasts-world-")
        self.certs = Certificates(self._dir)
        self._dns = DnsServer(self.zone)
        self._https: HttpsServer | None = None
        self._extra_https: list[HttpsServer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._counter = itertools.count(1)
        self.loop_errors: list[str] = []

    # --- lifecycle ---

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="test-world", daemon=True)
        self._thread.start()
        try:
            self._call(self._astart())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            return
        if thread.is_alive():
            try:
                self._call(self._astop())
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
        self._loop = self._thread = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(str(context.get("message")))
        log.warning(
            "test world loop: %s", context.get("message"), exc_info=context.get("exception")
        )

    async def _astart(self) -> None:
        await self._dns.start()
        self._https = await self._start_https_server(None)

    async def _start_https_server(self, tls_version: ssl.TLSVersion | None) -> HttpsServer:
        candidates = random.sample(range(2, 255), 40)
        for last in candidates:
            server = HttpsServer(self.certs, f"127.0.0.{last}", tls_version=tls_version)
            try:
                await server.start()
            except PermissionError as exc:
                raise WorldUnavailable(
                    f"cannot bind 127.0.0.{last}:443 ({exc.strerror}); "
                    "the policy-host tests need root or CAP_NET_BIND_SERVICE"
                ) from exc
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise WorldUnavailable(f"cannot bind 127.0.0.{last}:443: {exc}") from exc
            return server
        raise WorldUnavailable("port 443 is in use on every 127.0.0.x tried")

    async def _astop(self) -> None:
        for server in self._extra_https:
            await server.close()
        if self._https is not None:
            await self._https.close()
        await self._dns.close()

    def start_https_server(self, *, tls_version: ssl.TLSVersion | None = None) -> HttpsServer:
        """Another policy-host server on a free 127.0.0.x:443, stopped with the world.

        ``tls_version`` pins it to one protocol version (e.g. a TLS 1.0-only
        host). Put a domain on it with :meth:`serve_from`.
        """
        server = self._call(self._start_https_server(tls_version))
        self._extra_https.append(server)
        return server

    def serve_from(self, domain: str, server: HttpsServer) -> None:
        """Move ``mta-sts.<domain>`` (its A record and its site) to ``server``."""
        assert self._https is not None, "world not started"
        host = f"mta-sts.{domain}"
        site = self._https.get_site(host)
        assert site is not None, f"{domain} has no policy site to move"
        self._https.remove_site(host)
        server.set_site(host, site)
        self.zone.set(host, "A", [server.ip])

    # --- addresses ---

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:<port>``, UDP and TCP: the value for ``nameservers``."""
        return f"{self._dns.host}:{self._dns.port}"

    @property
    def ca_file(self) -> str:
        """PEM file of the trusted test CA."""
        return self.certs.ca_file

    @property
    def https_ip(self) -> str:
        """The 127.0.0.x address of the policy hosts (port 443)."""
        assert self._https is not None, "world not started"
        return self._https.ip

    @staticmethod
    def policy_text(mode: str, mx: Sequence[str], max_age: int = 86400) -> str:
        """A well-formed policy body (LF line ends, final newline)."""
        lines = [
            "version: STSv1",
            f"mode: {mode}",
            *(f"mx: {m}" for m in mx),
            f"max_age: {max_age}",
        ]
        return "\n".join(lines) + "\n"

    def fresh_domain(self, prefix: str = "t") -> str:
        """A domain name no other test has used in this session."""
        return f"{prefix}{next(self._counter)}-{secrets.token_hex(3)}.loc"

    def lookup_a(self, name: str) -> str | None:
        """What the DNS server answers for ``A name`` (for the test proxy)."""
        return self.zone.lookup_a(name)

    # --- domains ---

    def add_domain(
        self,
        domain: str,
        *,
        txt: TxtSpec | None = DEFAULT,
        policy: str | bytes | None = DEFAULT,
        status: int = 200,
        content_type: str | None = "text/plain",
        headers: Sequence[tuple[str, str]] = (),
        cert: CertKind = "good",
        framing: Framing = "length",
        delay: float = 0.0,
        https: bool = True,
    ) -> None:
        """Add (or replace) a policy domain.

        ``txt``: records at ``_mta-sts.<domain>``; a ``str``/``bytes`` entry is a
        single-string record (split at 255 bytes if longer), a list entry is a
        multi-string record. Default: ``v=STSv1;id=20180907T090909;``. ``None``:
        the name does not exist (NXDOMAIN); ``[]``: it exists without TXT (NODATA).
        ``policy``: the body (default :data:`GOOD_POLICY`); ``None``: no site (404).
        ``content_type=None`` sends no Content-Type; ``framing`` is ``"length"``,
        ``"chunked"`` or ``"close"``; ``delay`` holds the HTTP answer back;
        ``https=False`` leaves ``mta-sts.<domain>`` without an A record.
        """
        domain = domain.lower().rstrip(".")
        self.remove(domain)
        self.zone.set(domain, "A", ["127.0.0.1"])
        if https:
            self.zone.set(f"mta-sts.{domain}", "A", [self.https_ip])
        self.set_txt(domain, txt)
        self.set_policy(
            domain,
            policy,
            status=status,
            content_type=content_type,
            headers=tuple(headers),
            cert=cert,
            framing=framing,
            delay=delay,
        )

    def set_txt(self, domain: str, txt: TxtSpec | None = DEFAULT) -> None:
        """Replace the TXT records of ``_mta-sts.<domain>`` (see add_domain)."""
        name = f"_mta-sts.{domain}"
        if txt is DEFAULT:
            txt = [DEFAULT_TXT]
        if txt is None:
            self.zone.delete(name)
            return
        self.zone.delete(name)
        self.zone.touch(name)
        self.zone.set(name, "TXT", [_txt_record(entry) for entry in txt])

    def set_cname(self, domain: str, target: str) -> None:
        """Make ``_mta-sts.<domain>`` a CNAME for ``target``."""
        name = f"_mta-sts.{domain}"
        self.zone.delete(name)
        self.zone.set(name, "CNAME", [target])

    def set_policy(self, domain: str, policy: str | bytes | None = DEFAULT, **site: Any) -> None:
        """Replace the body of ``mta-sts.<domain>``; other Site fields may be given
        (status, content_type, headers, cert, framing, delay); those not given
        keep their current values."""
        host = f"mta-sts.{domain}"
        assert self._https is not None, "world not started"
        if policy is None:
            self._https.remove_site(host)
            return
        if policy is DEFAULT:
            policy = GOOD_POLICY
        body = policy.encode() if isinstance(policy, str) else policy
        current = self._https.get_site(host)
        fields: dict[str, Any] = {}
        if current is not None:
            fields = {
                "status": current.status,
                "content_type": current.content_type,
                "headers": current.headers,
                "cert": current.cert,
                "framing": current.framing,
                "delay": current.delay,
                "drip": current.drip,
                "drip_head": current.drip_head,
                "endless": current.endless,
            }
        fields.update(site)
        if "headers" in fields:
            fields["headers"] = tuple(fields["headers"])
        self._https.set_site(host, Site(body=body, **fields))

    def set_rcode(self, name: str, rcode: str | None) -> None:
        """Answer every query for the DNS ``name`` with ``rcode`` (``"SERVFAIL"``...)."""
        self.zone.set_rcode(name, rcode)

    def stall_dns(self, name: str, seconds: float | None) -> None:
        """Delay answers for the DNS ``name`` by ``seconds``.

        ``None`` never answers (a blackhole); ``0`` answers at once again.
        """
        if seconds == 0:
            self.zone.unstall(name)
        else:
            self.zone.stall(name, seconds)

    def remove(self, domain: str) -> None:
        """Forget ``domain`` entirely (all its names become NXDOMAIN, site gone)."""
        for name in (domain, f"_mta-sts.{domain}", f"mta-sts.{domain}"):
            self.zone.delete(name)
        if self._https is not None:
            self._https.remove_site(f"mta-sts.{domain}")

    # --- counters ---

    def txt_queries(self, domain: str) -> int:
        """TXT queries received for ``_mta-sts.<domain>`` (UDP and TCP, retries too)."""
        return self.zone.queries(f"_mta-sts.{domain}", "TXT")

    def distinct_txt_queries(self, domain: str) -> int:
        """TXT queries for ``_mta-sts.<domain>`` with distinct message ids: the
        lookups a resolver made, its retransmissions (same id) counted once."""
        return self.zone.distinct_queries(f"_mta-sts.{domain}", "TXT")

    def https_requests(self, domain: str) -> int:
        """HTTP requests received with ``Host: mta-sts.<domain>``."""
        assert self._https is not None, "world not started"
        return self._https.requests(f"mta-sts.{domain}")

    def last_request(self, domain: str) -> dict[str, str] | None:
        """The last request for ``mta-sts.<domain>``: ``":request"`` holds the
        request line, other keys are lower-case header names."""
        assert self._https is not None, "world not started"
        return self._https.last_request(f"mta-sts.{domain}")

    # --- the catalogue ---

    def add_catalogue(self) -> None:
        """Add the fixed test domains listed in the module docstring."""
        add = self.add_domain
        good = GOOD_POLICY
        # research/peer.md §5.1
        add("good.loc")
        add("bad-record1.loc", txt=["id=20180907T090909; v=STSv1;"])
        add("bad-record2.loc", txt=["azazaza;asdasdasdasd"])
        add("bad-record3.loc", txt=["v=STSv12;id=20180907T090909;"])
        add("no-record.loc", txt=None)
        add("no-data.loc", txt=[])
        self.zone.set("_mta-sts.no-data.loc", "A", ["127.0.0.1"])
        add("blackhole.loc")
        self.stall_dns("_mta-sts.blackhole.loc", None)
        add("bad-policy1.loc", policy="garbage")
        add("bad-policy2.loc", policy="version: STSv1\nmode: enforce\nmax_age: 86400")
        add("bad-policy3.loc", content_type="text/html")
        add("bad-policy4.loc", status=404)
        add("bad-policy5.loc", policy="version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: xxx")
        add(
            "bad-policy6.loc",
            policy="version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: 31557601",
        )
        add("bad-policy7.loc", policy="version: STSv1\nmx: mail.loc\nmax_age: 86400")
        add(
            "bad-policy8.loc",
            policy="version: STSv1\nmode: doubt\nmx: mail.loc\nmax_age: 86400",
        )
        add("bad-cert1.loc", cert="untrusted")
        add("bad-cert2.loc", cert="wrong-name")
        add("valid-none.loc", policy="version: STSv1\nmode: none\nmax_age: 86400")
        add("testing.loc", policy="version: STSv1\nmode: testing\nmax_age: 86400\nmx: mail.loc\n")
        add("fast-expire.loc", policy="version: STSv1\nmode: enforce\nmax_age: 1\nmx: mail.loc\n")
        add("chunked-overlength.loc", policy=good + "\n" + BIG_BODY_PAD, framing="chunked")
        add("static-overlength.loc", policy=good + "\n" + BIG_BODY_PAD)

        # Discovery extras.
        add("two-records.loc", txt=["v=STSv1; id=one", "v=STSv1; id=two"])
        add("two-records-one-broken.loc", txt=["v=STSv1; id=one", "v=STSv1; id=bad-id!"])
        add("other-txt.loc", txt=["v=spf1 -all", "v=STSv1; id=withothers", "v=STSv10; id=x"])
        add("split-txt.loc", txt=[["v=STSv1; ", "id=split", "txt01;"]])
        add("big-txt.loc", txt=["v=STSv1; id=bigtxt; pad=" + "x" * 600])
        add("long-id.loc", txt=["v=STSv1; id=" + "a" * 33])
        add("bad-id.loc", txt=["v=STSv1; id=2018-09-07"])
        add("empty-id.loc", txt=["v=STSv1; id=;"])
        add("non-ascii-txt.loc", txt=["v=STSv1; id=caf\u00e9".encode()])
        add("non-ascii-other.loc", txt=["caf\u00e9=1".encode(), "v=STSv1; id=asciiok"])
        add("cname.loc")
        self.set_cname("cname.loc", "sts.cname-target.loc")
        self.zone.set("sts.cname-target.loc", "TXT", [[b"v=STSv1; id=viacname"]])
        add("cname-nodata.loc")
        self.set_cname("cname-nodata.loc", "nodata.cname-target.loc")
        self.zone.touch("nodata.cname-target.loc")
        add("cname-loop.loc")
        self.set_cname("cname-loop.loc", "loop.cname-target.loc")
        self.zone.set("loop.cname-target.loc", "CNAME", ["_mta-sts.cname-loop.loc"])
        add("servfail.loc")
        self.set_rcode("_mta-sts.servfail.loc", "SERVFAIL")
        add("refused.loc")
        self.set_rcode("_mta-sts.refused.loc", "REFUSED")

        # HTTPS extras.
        add("expired-cert.loc", cert="expired")
        add("self-signed.loc", cert="self-signed")
        add(
            "redirect.loc",
            status=302,
            headers=[("Location", "https://mta-sts.good.loc/.well-known/mta-sts.txt")],
        )
        add("gzip.loc", policy=gzip.compress(good.encode()), headers=[("Content-Encoding", "gzip")])
        add("no-content-type.loc", content_type=None)
        add("charset.loc", content_type="text/plain; charset=utf-8")
        add(
            "cache-headers.loc",
            headers=[
                ("Cache-Control", "no-store, max-age=0"),
                ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
        )
        add("eof-body.loc", framing="close")
        add("eof-overlength.loc", policy=good + "\n" + BIG_BODY_PAD, framing="close")
        add("exactly-64k.loc", policy=_padded(good, 65_536))
        add("over-64k.loc", policy=_padded(good, 65_537))
        add("slow-https.loc", delay=30.0)
        add("no-https-host.loc", https=False)

        # Policy extras.
        add("crlf.loc", policy=good.replace("\n", "\r\n") + "\r\n")
        add(
            "dup-keys.loc",
            policy="version: STSv1\nmode: enforce\nmode: none\nmx: mail.loc\n"
            "max_age: 86400\nmax_age: 1\n",
        )
        add(
            "ip-mx.loc",
            policy="version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmx: [192.0.2.2]\n"
            "mx: mail.loc\nmax_age: 86400\n",
        )
        add(
            "huge-max-age.loc",
            policy="version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: 9999999999\n",
        )
        add(
            "invalid-mx.loc",
            policy="version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmx: b\u00fccher.loc\n"
            "mx: *.*.loc\nmax_age: 86400\n",
        )
        add("non-utf8.loc", policy=good.encode() + b"\ncomment: caf\xe9\n")
        add(
            "xn--bcher-kva.loc",
            policy="version: STSv1\nmode: enforce\nmx: mail.xn--bcher-kva.loc\nmax_age: 86400\n",
        )


def _padded(policy: str, size: int) -> str:
    """``policy`` plus an extension line so that the body is exactly ``size`` bytes."""
    head = policy + "\npadding: "
    return head + "p" * (size - len(head.encode()) - 1) + "\n"
