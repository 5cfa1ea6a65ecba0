"""End to end: real Postfix delivers real mail under the daemon's MTA-STS answers.

Everything runs inside a network namespace the test creates, so that DNS,
port 25 and port 443 are the test's own and nothing can leak to the internet
(the lab: tests/servers/maillab.py and tests/servers/netns.py):

- a DNS server on 127.0.0.53:53 (tests/servers/dns.py) serving
  MX, A and ``_mta-sts`` TXT records; ``/etc/netns/<ns>/resolv.conf`` points at
  it, and ``ip netns exec`` bind-mounts that file over /etc/resolv.conf for
  every process it starts, Postfix's smtp(8) included;
- the HTTPS policy host (tests/servers/https.py, trustme test CA) on 127.0.0.10:443;
- receiving SMTP servers on 127.0.1.x:25 (tests/servers/smtp.py, aiosmtpd), with
  STARTTLS and a certificate from the test CA, with a certificate for the wrong
  name, or without STARTTLS at all;
- the daemon (``python -m mtasts_fast``) on 127.0.0.1:8461;
- a sending Postfix with its own config, queue and log (tests/servers/postfix.py),
  ``smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix`` and
  ``smtp_tls_security_level = may`` as the level for domains without a policy.

The servers run on an event loop in a thread of this process that has
entered the namespace with setns(2) (a network namespace is per thread); the
daemon and Postfix are started with ``ip netns exec``.

Every assertion comes from Postfix's own log and queue and from what the
receivers saw: "nothing sent in clear" means no ``MAIL FROM`` ever reached the
receiver outside TLS. Needs root (``ip netns add``, port 25): skipped without
it, failed instead under ``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from tests.servers.maillab import (
    DAEMON_PORT,
    Destination,
    MailLab,
    ReceiverSpec,
    mail_lab,
)
from tests.servers.postfix import PostfixInstance, postfix_program

pytestmark = pytest.mark.slow

POLICY_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:postfix"
TLSRPT_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:tlsrpt"


# --- the lab --------------------------------------------------------------------


# One receiver per behaviour, on its own address so that every assertion about
# "what reached this MX" concerns a single test.
GOOD_MX_IP = "127.0.1.1"  # STARTTLS, certificate for the MX names below
WRONG_NAME_MX_IP = "127.0.1.2"  # STARTTLS, certificate for another name
PLAIN_MX_IP = "127.0.1.3"  # no STARTTLS
TESTING_MX_IP = "127.0.1.4"  # STARTTLS, certificate for another name

ENFORCE_OK = Destination("enforce-ok.test", "enforce", "mx.enforce-ok.test", GOOD_MX_IP)
ENFORCE_WRONG_NAME = Destination(
    "enforce-wrong-name.test", "enforce", "mx.enforce-wrong-name.test", WRONG_NAME_MX_IP
)
ENFORCE_PLAIN = Destination("enforce-plain.test", "enforce", "mx.enforce-plain.test", PLAIN_MX_IP)
TESTING_BAD_CERT = Destination(
    "testing-bad-cert.test", "testing", "mx.testing-bad-cert.test", TESTING_MX_IP
)
DAEMON_DOWN = Destination("daemon-down.test", "enforce", "mx.daemon-down.test", GOOD_MX_IP)
# Routed through a second smtp(8) service whose policy table is the daemon's
# `tlsrpt` zone (TLSRPT attributes on).
TLSRPT_ZONE = Destination("tlsrpt-zone.test", "enforce", "mx.tlsrpt-zone.test", GOOD_MX_IP)
DESTINATIONS = (
    ENFORCE_OK,
    ENFORCE_WRONG_NAME,
    ENFORCE_PLAIN,
    TESTING_BAD_CERT,
    DAEMON_DOWN,
    TLSRPT_ZONE,
)
# main.cf transport_maps and the master.cf service behind it.
TLSRPT_TRANSPORT = f"inline:{{ {TLSRPT_ZONE.domain}=smtp-tlsrpt: }}"
TLSRPT_SERVICE = f"smtp-tlsrpt unix - - n - - smtp -o smtp_tls_policy_maps={TLSRPT_TABLE}\n"


RECEIVERS = (
    ReceiverSpec(
        GOOD_MX_IP,
        "good.receiver.test",
        (ENFORCE_OK.mx_host, DAEMON_DOWN.mx_host, TLSRPT_ZONE.mx_host),
    ),
    ReceiverSpec(WRONG_NAME_MX_IP, "wrong.receiver.test", ("wrong-name.mtasts-e2e.test",)),
    ReceiverSpec(PLAIN_MX_IP, "plain.receiver.test", None),
    ReceiverSpec(TESTING_MX_IP, "testing.receiver.test", ("wrong-name.mtasts-e2e.test",)),
)


@pytest.fixture(scope="module")
def lab() -> Iterator[MailLab]:
    for program in ("postfix", "sendmail", "postqueue"):
        postfix_program(program)
    with mail_lab("mtasts-e2e", RECEIVERS, zones={"tlsrpt": {"tlsrpt": True}}) as lab:
        for dest in DESTINATIONS:
            lab.publish(dest)
        # The sending Postfix: the host's (Debian 12: 3.7).
        lab.postfix = PostfixInstance(
            lab.root / "postfix",
            {
                "myhostname": f"sender-{secrets.token_hex(3)}.mtasts-e2e.test",
                "inet_interfaces": "loopback-only",
                "inet_protocols": "ipv4",
                # MX and A records from DNS (the namespace's resolv.conf), never
                # from /etc/hosts.
                "smtp_host_lookup": "dns",
                "disable_dns_lookups": "no",
                "smtp_dns_support_level": "enabled",
                # Domains without a policy: opportunistic TLS, as most senders.
                "smtp_tls_security_level": "may",
                "smtp_tls_CAfile": lab.certs.ca_file,
                "smtp_tls_policy_maps": POLICY_TABLE,
                "smtp_tls_loglevel": "1",
                "smtp_connect_timeout": "5s",
                "transport_maps": TLSRPT_TRANSPORT,
            },
            netns=lab.netns.name,
            services=TLSRPT_SERVICE,
        )
        try:
            lab.postfix.start()
            yield lab
        finally:
            lab.postfix.stop()


# --- the deliveries ---------------------------------------------------------------


def test_enforce_valid_certificate_is_delivered_verified(lab: MailLab) -> None:
    recipient, since = lab.send(ENFORCE_OK.domain)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    assert f"relay={ENFORCE_OK.mx_host}[{GOOD_MX_IP}]:25" in line
    # "Verified" is only logged at the verify/secure levels: Postfix applied the
    # daemon's "secure match=..." (at the default level "may" it says "Trusted").
    log = lab.mta.log_since(since)
    assert f"Verified TLS connection established to {ENFORCE_OK.mx_host}[{GOOD_MX_IP}]:25" in log
    # smtp(8) resolved the MX through the namespace's resolv.conf: our server
    # saw the query (the host's resolver has never heard of .test names).
    assert lab.zone.queries(ENFORCE_OK.domain, "MX") >= 1
    transactions, messages = lab.listener(GOOD_MX_IP)
    delivered = [m for m in messages if recipient in m.recipients]
    assert len(delivered) == 1
    assert delivered[0].tls
    assert all(t.tls for t in transactions)
    assert lab.mta.wait_queue(recipient, []) == []


def test_enforce_wrong_certificate_name_is_deferred(lab: MailLab) -> None:
    recipient, since = lab.send(ENFORCE_WRONG_NAME.domain)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "dsn=4.7.5" in line
    assert "Server certificate not verified" in line
    # Trusted CA, wrong name: it is the match= list from the policy that failed.
    log = lab.mta.log_since(since)
    failed = f"server certificate verification failed for {ENFORCE_WRONG_NAME.mx_host}"
    assert re.search(re.escape(failed) + r".*hostname mismatch", log), log
    # Still queued, to be retried (RFC 8461 §5.1: a temporary failure).
    assert lab.mta.wait_queue(recipient, ["deferred"]) == ["deferred"]
    # TLS was negotiated and then abandoned: no transaction at all reached the
    # MX, in clear or otherwise.
    transactions, messages = lab.listener(WRONG_NAME_MX_IP)
    assert transactions == []
    assert messages == []


def test_enforce_without_starttls_is_deferred_never_sent_in_clear(lab: MailLab) -> None:
    recipient, since = lab.send(ENFORCE_PLAIN.domain)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "TLS is required, but was not offered" in line
    assert lab.mta.wait_queue(recipient, ["deferred"]) == ["deferred"]
    transactions, messages = lab.listener(PLAIN_MX_IP)
    assert transactions == []
    assert messages == []


def test_testing_mode_bad_certificate_is_still_delivered(lab: MailLab) -> None:
    # RFC 8461 §5: in testing mode a validation failure must not stop delivery;
    # the daemon answers NOTFOUND and Postfix uses its own level ("may").
    recipient, since = lab.send(TESTING_BAD_CERT.domain)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.mta.log_since(since)
    assert f"TLS connection established to {TESTING_BAD_CERT.mx_host}[{TESTING_MX_IP}]:25" in log
    assert f"Verified TLS connection established to {TESTING_BAD_CERT.mx_host}" not in log
    _transactions, messages = lab.listener(TESTING_MX_IP)
    assert [m.recipients for m in messages] == [(recipient,)]
    assert messages[0].tls


def test_daemon_down_defers_and_delivers_once_it_is_back(lab: MailLab) -> None:
    lab.daemon.stop()
    try:
        recipient, since = lab.send(DAEMON_DOWN.domain)
        line = lab.outcome(recipient, since)
        # A failed policy lookup never means "no policy": Postfix defers
        # rather than deliver with the weaker default level.
        assert "status=deferred" in line, lab.diagnostics()
        assert "dsn=4.7.5" in line
        log = lab.mta.log_since(since)
        assert f"table {POLICY_TABLE} lookup error" in log
        assert lab.mta.wait_queue(recipient, ["deferred"]) == ["deferred"]
        assert [m for m in lab.receiver.messages() if recipient in m.recipients] == []
    finally:
        lab.daemon.start()
    since = lab.mta.log_size()
    lab.mta.flush()
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.mta.log_since(since)
    assert f"Verified TLS connection established to {DAEMON_DOWN.mx_host}[{GOOD_MX_IP}]:25" in log
    delivered = [m for m in lab.receiver.messages() if recipient in m.recipients]
    assert len(delivered) == 1
    assert delivered[0].tls
    assert lab.mta.wait_queue(recipient, []) == []


def test_tlsrpt_attributes_need_postfix_3_10(lab: MailLab) -> None:
    # The reason `tlsrpt` is a per-zone opt-in: Postfix before 3.10 rejects the
    # TLSRPT attributes (policy_type=...) in a TLS policy, and a rejected policy
    # defers every message to the domain. From 3.10 on they are accepted.
    recipient, since = lab.send(TLSRPT_ZONE.domain)
    line = lab.outcome(recipient, since)
    log = lab.mta.log_since(since)
    _transactions, messages = lab.listener(GOOD_MX_IP)
    delivered = [m for m in messages if recipient in m.recipients]
    if lab.mta.version() >= (3, 10):
        assert "status=sent" in line, lab.diagnostics()
        assert f"Verified TLS connection established to {TLSRPT_ZONE.mx_host}" in log
        assert len(delivered) == 1
    else:
        assert "status=deferred" in line, lab.diagnostics()
        assert "dsn=4.7.5" in line
        assert 'invalid attribute name: "policy_type"' in log
        assert delivered == []
        assert lab.mta.wait_queue(recipient, ["deferred"]) == ["deferred"]
