"""From a socketmap lookup key to the policy domain it names (DESIGN.md §4).

Postfix asks ``smtp_tls_policy_maps`` about the next-hop domain, which may come
as ``example.com``, ``[example.com]``, ``[example.com]:25`` or ``example.com:587``,
and also about parent domains (``.example.com``) when it walks up the tree.
:func:`normalise_key` maps every spelling of one domain to the same cache key,
a lower-case A-label with no trailing dot, and returns ``None`` for keys that
must be answered ``NOTFOUND`` at once, without any DNS traffic.

Fixed against postfix-mta-sts-resolver's ``filter_domain``: an unbracketed IPv6
address is recognised as such instead of being cut at its last colon, an
unclosed ``[`` is rejected instead of being looked up, and U-labels are
converted to A-labels so ``bücher.test`` and ``xn--bcher-kva.test`` share one
cache entry.

The result is pure and cheap enough to memoise; the caller does that.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import idna

from mtasts_fast.matcher import is_valid_hostname

__all__ = ["normalise_key"]

# Only ASCII white space: anything else cannot be part of a host name, and is
# better rejected with the rest of the key than silently dropped.
_SPACE: Final = " \t\r\n\v\f"
_ACE_PREFIX: Final = "xn--"  # RFC 5890 §2.3.2.1


def normalise_key(key: bytes) -> str | None:
    """The policy domain for socketmap key ``key``, or None for ``NOTFOUND``."""
    try:
        text = key.decode("utf-8")  # strict: invalid UTF-8 is not a domain
    except UnicodeDecodeError:
        return None
    host = _strip_port(text.strip(_SPACE))
    if host is None or _is_ip_literal(host):
        return None
    if not host.isascii():
        # UTS #46 mapping (case folding, full-width dots, ...) first, so the
        # dot rules below see the same name the conversion will.
        try:
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError:
            return None
    host = host.lower()
    if host.endswith("."):  # one trailing dot: the root, as in a fully qualified name
        host = host[:-1]
    if not host or host.startswith("."):
        # A leading dot is Postfix probing a parent domain; RFC 8461 §3.4 says
        # a policy applies to its exact domain only, never to sub-domains.
        return None
    if not host.isascii():
        try:
            # IDNA2008 (RFC 5891 §4) U-label to A-label conversion.
            host = idna.encode(host).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
    # is_valid_hostname tolerates one trailing dot; the cache key must have none.
    if host.endswith(".") or not is_valid_hostname(host) or not _a_labels_ok(host):
        return None
    return host


def _strip_port(text: str) -> str | None:
    """The host part of ``[host]``, ``[host]:port``, ``host:port`` or ``host``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        rest = text[close + 1 :]
        if rest and not (rest[0] == ":" and _is_port(rest[1:])):
            return None
        return text[1:close]
    if ":" not in text:
        return text
    host, _, port = text.partition(":")
    # Two or more colons: an unbracketed IPv6 address (or junk), never host:port.
    if ":" in port or not _is_port(port):
        return None
    return host


def _is_port(text: str) -> bool:
    # ASCII digits only: str.isdigit() alone would accept "²" or "٣".
    return text.isascii() and text.isdigit()


def _is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address, or an RFC 5321 §4.1.3 address literal."""
    if host[:5].lower() == "ipv6:" or host.count(":") > 1:
        return True
    if not host[-1:].isdigit():
        # An IPv4 address ends in a digit and an IPv6 one has two colons, so
        # this is no address; it skips ip_address() raising ValueError, the
        # dearest step for an ordinary name (a quarter of a memo miss).
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _a_labels_ok(host: str) -> bool:
    """True unless a label that claims to be an A-label cannot be one.

    Only the Punycode layer is checked (RFC 3492 decoding, a non-ASCII result,
    canonical round trip; RFC 5891 §5.4 asks the same of a lookup). IDNA2008
    code-point rules are deliberately not applied to A-label input: names
    registered under IDNA2003, such as emoji domains, exist and would silently
    lose their MTA-STS policy if we answered NOTFOUND for them.
    """
    if _ACE_PREFIX not in host:
        return True
    for label in host.split("."):
        if not label.startswith(_ACE_PREFIX):
            continue
        encoded = label[len(_ACE_PREFIX) :].encode("ascii")
        try:
            decoded = encoded.decode("punycode")
        except (UnicodeError, ValueError, OverflowError):
            return False
        if decoded.isascii() or decoded.encode("punycode") != encoded:
            return False
    return True
