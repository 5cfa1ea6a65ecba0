"""Postfix 3.10 as the client: TLSRPT attributes, MX-pattern enforcement, the report.

The sender is Postfix 3.10 from the Debian 13 root (tests/roots.py), chrooted
into an overlay of it and run inside the lab's network namespace
(tests/servers/maillab.py: DNS, HTTPS policy host, receivers and the daemon),
with ``smtp_tlsrpt_enable = yes`` reporting to sys4's ``tlsrpt-collectd``
(tests/servers/tlsrpt.py) in the same root. Its tables, unchanged from
postfix-tlspol's README:

- ``smtp`` (every destination): ``socketmap:inet:127.0.0.1:8461:QUERYwithTLSRPT``,
  a map name the daemon's configuration does not mention (TLSRPT attributes
  by convention); the daemon's ``default_zone`` sets ``tlsrpt_testing_level:
  may``, this Postfix's own ``smtp_tls_security_level``;
- ``smtp-plain`` (recipients ``plain-*``): ``...:QUERY``, the default zone
  without TLSRPT attributes, as an operator without the TLSRPT map has it.

Every destination publishes ``_smtp._tls.<domain> TXT "v=TLSRPTv1;
rua=mailto:tlsrpt@reports.test"``. The deliveries (a)-(d) of issue 13 run once
per module (fixture ``deliveries``); the tests read their outcome from
Postfix's log and the receivers, and (e) reads the RFC 8460 reports that
``tlsrpt-reportd`` builds from them and mails, through this same Postfix, to
the receiver of ``reports.test``.

Needs root and the built root: skipped without them, failed instead under
``MTASTS_REQUIRE_ALL=1``. Runs in the compiled pass only (it tests Postfix and
the reporter, not the daemon's twins).
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.roots import (
    Overlay,
    compiled_pass_only,
    debian13_root_fixture,  # noqa: F401  (provides the debian13_root fixture)
    overlay_root,
)
from tests.servers.maillab import (
    DAEMON_PORT,
    Destination,
    MailLab,
    ReceiverSpec,
    mail_lab,
)
from tests.servers.postfix import PostfixInstance
from tests.servers.tlsrpt import TlsrptReporter

pytestmark = [pytest.mark.slow, compiled_pass_only]

TLSRPT_MAP = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:QUERYwithTLSRPT"
PLAIN_MAP = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:QUERY"
RUA = "mailto:tlsrpt@reports.test"

GOOD_IP = "127.0.1.1"  # STARTTLS, certificate for the names below
WRONG_NAME_IP = "127.0.1.2"  # STARTTLS, certificate for another name
PLAIN_IP = "127.0.1.3"  # no STARTTLS
UNTRUSTED_IP = "127.0.1.4"  # STARTTLS, certificate from a CA Postfix does not trust
REPORTS_IP = "127.0.1.9"  # the MX of reports.test, where the reports go

ENFORCE_OK = Destination("enforce-ok.test", "enforce", "mx.enforce-ok.test", GOOD_IP, tlsrpt=RUA)
# (b): DNS names mx2 as the MX; the policy lists only mx1, and the MX presents
# a certificate valid for mx1, a name the policy lists.
UNLISTED_MX = Destination(
    "unlisted-mx.test",
    "enforce",
    "mx2.unlisted-mx.test",
    GOOD_IP,
    policy_mx=("mx1.unlisted-mx.test",),
    tlsrpt=RUA,
)
WRONG_NAME = Destination(
    "wrong-name.test", "enforce", "mx.wrong-name.test", WRONG_NAME_IP, tlsrpt=RUA
)
NO_STARTTLS = Destination(
    "no-starttls.test", "enforce", "mx.no-starttls.test", PLAIN_IP, tlsrpt=RUA
)
TESTING_UNTRUSTED = Destination(
    "testing-untrusted.test", "testing", "mx.testing-untrusted.test", UNTRUSTED_IP, tlsrpt=RUA
)
TESTING_WRONG_NAME = Destination(
    "testing-wrong-name.test", "testing", "mx.testing-wrong-name.test", WRONG_NAME_IP, tlsrpt=RUA
)
# (d): a testing policy with (b)'s unlisted MX is delivered all the same.
TESTING_UNLISTED_MX = Destination(
    "testing-unlisted-mx.test",
    "testing",
    "mx2.testing-unlisted-mx.test",
    GOOD_IP,
    policy_mx=("mx1.testing-unlisted-mx.test",),
    tlsrpt=RUA,
)
DESTINATIONS = (
    ENFORCE_OK,
    UNLISTED_MX,
    WRONG_NAME,
    NO_STARTTLS,
    TESTING_UNTRUSTED,
    TESTING_WRONG_NAME,
    TESTING_UNLISTED_MX,
)
RECEIVERS = (
    ReceiverSpec(
        GOOD_IP,
        "good.receiver.test",
        ("mx.enforce-ok.test", "mx1.unlisted-mx.test", "mx1.testing-unlisted-mx.test"),
    ),
    ReceiverSpec(WRONG_NAME_IP, "wrong.receiver.test", ("wrong-name.receiver.test",)),
    ReceiverSpec(PLAIN_IP, "plain.receiver.test", None),
    ReceiverSpec(
        UNTRUSTED_IP, "untrusted.receiver.test", ("mx.testing-untrusted.test",), untrusted=True
    ),
    ReceiverSpec(REPORTS_IP, "reports.receiver.test", ("mx.reports.test",)),
)

# Inside the chroot.
POSTFIX_DIR = Path("/var/tmp/mtasts-pf310")
TLSRPT_DIR = Path("/var/lib/mtasts-tlsrpt")
CA_FILE = Path("/etc/ssl/mtasts-test-ca.pem")
SMTP_PLAIN_SERVICE = f"smtp-plain unix - - n - - smtp -o smtp_tls_policy_maps={PLAIN_MAP}\n"


@dataclass
class Lab310:
    lab: MailLab
    overlay: Overlay
    postfix: PostfixInstance
    reporter: TlsrptReporter


@dataclass(frozen=True)
class Delivery:
    """One message's fate: the smtp(8) line that settled it and the log around it."""

    recipient: str
    line: str
    log: str


def _backdated(path: Path, text: str) -> None:
    """Write a table Postfix reads; an mtime in the past keeps it from waiting."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


@pytest.fixture(scope="module")
def lab310(debian13_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab310]:
    scratch = tmp_path_factory.mktemp("pf310")
    # This Postfix's own level (smtp_tls_security_level below): reporting testing
    # policies at it lowers nothing.
    default_zone = {"tlsrpt_testing_level": "may"}
    with (
        overlay_root(debian13_root, scratch / "root", api_filesystems=True) as overlay,
        mail_lab(
            "mtasts-pf310", RECEIVERS, default_zone=default_zone, workdir=scratch / "lab"
        ) as lab,
    ):
        for dest in DESTINATIONS:
            lab.publish(dest)
        lab.zone.set("reports.test", "MX", [(10, "mx.reports.test")])
        lab.zone.set("mx.reports.test", "A", [REPORTS_IP])
        # A chroot reads its own /etc/resolv.conf (ip netns exec bind-mounts the
        # namespace's over the host's only).
        (overlay.path / "etc/resolv.conf").write_text(lab.netns.resolv_conf())
        (overlay.path / CA_FILE.relative_to("/")).write_bytes(Path(lab.certs.ca_file).read_bytes())

        reporter = TlsrptReporter(overlay.path, lab.netns.name, TLSRPT_DIR)
        reporter.start_collectd()
        lab.extra_logs["tlsrpt"] = reporter.host_path(TLSRPT_DIR / "collectd.log")

        transport = POSTFIX_DIR / "transport"
        postfix = PostfixInstance(
            POSTFIX_DIR,
            {
                "compatibility_level": "3.10",
                "myhostname": "sender.mtasts-e2e.test",
                "inet_interfaces": "loopback-only",
                "inet_protocols": "ipv4",
                "smtp_host_lookup": "dns",
                "disable_dns_lookups": "no",
                "smtp_dns_support_level": "enabled",
                "smtp_tls_security_level": "may",
                "smtp_tls_CAfile": str(CA_FILE),
                "smtp_tls_policy_maps": TLSRPT_MAP,
                # `untrusted`: log (and so report) an unknown issuer also at
                # the "may" level, where Postfix does not otherwise check it.
                "smtp_tls_loglevel": "routine, untrusted",
                "smtp_connect_timeout": "5s",
                "smtp_tlsrpt_enable": "yes",
                "smtp_tlsrpt_socket_name": str(reporter.socket),
                # Every session counted, even one resuming a TLS session.
                "smtp_tlsrpt_skip_reused_handshakes": "no",
                "smtp_connection_cache_on_demand": "no",
                "transport_maps": f"regexp:{transport}",
            },
            netns=lab.netns.name,
            services=SMTP_PLAIN_SERVICE,
            chroot=overlay.path,
        )
        postfix.write_config()
        _backdated(postfix.host_path(transport), "/^plain-[^@]*@/ smtp-plain:\n")
        lab.postfix = postfix
        try:
            postfix.start()
            yield Lab310(lab, overlay, postfix, reporter)
        finally:
            postfix.stop()
            reporter.stop_collectd()


@pytest.fixture(scope="module")
def deliveries(lab310: Lab310) -> dict[str, Delivery]:
    """(a)-(d), once per module: one message to each destination, and (b) twice."""
    lab = lab310.lab
    sends = {
        "a": (ENFORCE_OK.domain, "user"),
        "b-tlsrpt-map": (UNLISTED_MX.domain, "user"),
        "b-plain-zone": (UNLISTED_MX.domain, "plain"),
        "c-wrong-name": (WRONG_NAME.domain, "user"),
        "c-no-starttls": (NO_STARTTLS.domain, "user"),
        "d-untrusted": (TESTING_UNTRUSTED.domain, "user"),
        "d-wrong-name": (TESTING_WRONG_NAME.domain, "user"),
        "d-unlisted-mx": (TESTING_UNLISTED_MX.domain, "user"),
    }
    done = {}
    for name, (domain, local) in sends.items():
        recipient, since = lab.send(domain, local)
        line = lab.outcome(recipient, since)
        done[name] = Delivery(recipient, line, lab310.postfix.log_since(since))
    return done


def _diagnostics(lab310: Lab310) -> str:
    return lab310.lab.diagnostics() + "\n" + lab310.reporter.logs()


def test_postfix_3_10_5_or_later(lab310: Lab310) -> None:
    """MX-pattern enforcement (smtp_tls_enforce_sts_mx_patterns) arrived in 3.10.5."""
    assert lab310.postfix.version() >= (3, 10, 5)


def test_a_enforce_over_the_tlsrpt_map_is_verified(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    a = deliveries["a"]
    assert "status=sent" in a.line, _diagnostics(lab310)
    host = f"{ENFORCE_OK.mx_host}[{GOOD_IP}]:25"
    assert f"Verified TLS connection established to {host}" in a.log
    assert f"TLSRPT: status=success, domain={ENFORCE_OK.domain}" in a.log
    messages = lab310.lab.delivered(a.recipient)
    assert len(messages) == 1
    assert messages[0].tls


def test_b_unlisted_mx_deferred_with_the_tlsrpt_map(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    """The MX name is not in the policy: refused before connecting, whatever its certificate."""
    b = deliveries["b-tlsrpt-map"]
    assert "status=deferred" in b.line, _diagnostics(lab310)
    assert "dsn=4.3.0" in b.line
    assert "relay=none" in b.line
    assert (
        f"warning: MX name '{UNLISTED_MX.mx_host}' does not match STS MX pattern "
        f"for '{UNLISTED_MX.domain}'"
    ) in b.log
    assert lab310.postfix.wait_queue(b.recipient, ["deferred"]) == ["deferred"]
    assert lab310.lab.delivered(b.recipient) == []


def test_b_unlisted_mx_delivered_with_the_plain_zone(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    """Without mx_host_pattern Postfix only matches the certificate against match=.

    This is the hole the TLSRPT map closes on Postfix >= 3.10.5 (README).
    """
    b = deliveries["b-plain-zone"]
    assert "status=sent" in b.line, _diagnostics(lab310)
    host = f"{UNLISTED_MX.mx_host}[{GOOD_IP}]:25"
    assert f"Verified TLS connection established to {host}" in b.log
    assert len(lab310.lab.delivered(b.recipient)) == 1


def test_c_wrong_name_certificate_deferred(lab310: Lab310, deliveries: dict[str, Delivery]) -> None:
    c = deliveries["c-wrong-name"]
    assert "status=deferred" in c.line, _diagnostics(lab310)
    assert "dsn=4.7.5" in c.line
    assert "Server certificate not verified" in c.line
    host = f"{WRONG_NAME.mx_host}[{WRONG_NAME_IP}]:25"
    assert f"server certificate verification failed for {host}: num=62:hostname mismatch" in (c.log)
    assert "failure_type=certificate_host_mismatch" in c.log
    assert lab310.lab.delivered(c.recipient) == []
    # TLS was negotiated and abandoned: nothing ever reached that MX in clear.
    assert all(t.tls for t in lab310.lab.listener(WRONG_NAME_IP)[0])


def test_c_no_starttls_deferred_never_in_clear(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    c = deliveries["c-no-starttls"]
    assert "status=deferred" in c.line, _diagnostics(lab310)
    assert "TLS is required, but was not offered" in c.line
    assert "failure_type=starttls_not_supported" in c.log
    transactions, messages = lab310.lab.listener(PLAIN_IP)
    assert transactions == []
    assert messages == []


def test_d_testing_untrusted_certificate_delivered_and_reported_as_failure(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    """RFC 8461 §5: testing delivers; the failure goes to the report (Postfix level "may")."""
    d = deliveries["d-untrusted"]
    assert "status=sent" in d.line, _diagnostics(lab310)
    host = f"{TESTING_UNTRUSTED.mx_host}[{UNTRUSTED_IP}]:25"
    assert f"Untrusted TLS connection established to {host}" in d.log
    assert (
        f"TLSRPT: status=failure, domain={TESTING_UNTRUSTED.domain}, "
        f"receiving_mx={TESTING_UNTRUSTED.mx_host}[{UNTRUSTED_IP}], "
        "failure_type=validation_failure"
    ) in d.log
    messages = lab310.lab.delivered(d.recipient)
    assert len(messages) == 1
    assert messages[0].tls


def test_d_testing_wrong_name_delivered_and_reported_as_success(
    lab310: Lab310, deliveries: dict[str, Delivery]
) -> None:
    """A Postfix 3.10 limit: at "may" it checks no certificate name, so no failure to report.

    If a later Postfix reports it, this test fails and the README table changes.
    """
    d = deliveries["d-wrong-name"]
    assert "status=sent" in d.line, _diagnostics(lab310)
    assert f"TLSRPT: status=success, domain={TESTING_WRONG_NAME.domain}" in d.log
    assert len(lab310.lab.delivered(d.recipient)) == 1


def test_d_testing_unlisted_mx_delivered(lab310: Lab310, deliveries: dict[str, Delivery]) -> None:
    """The MX-pattern check is secure-level only: a testing policy never defers for it."""
    d = deliveries["d-unlisted-mx"]
    assert "status=sent" in d.line, _diagnostics(lab310)
    assert "does not match STS MX pattern" not in d.log
    assert f"TLSRPT: status=success, domain={TESTING_UNLISTED_MX.domain}" in d.log
    assert len(lab310.lab.delivered(d.recipient)) == 1


# --- (e) the report ---------------------------------------------------------------


@dataclass(frozen=True)
class Reports:
    day: str
    fetched_domains: list[str]
    fetched: dict[str, Any]
    mails: dict[str, EmailMessage]
    json: dict[str, dict[str, Any]]


# Session results the collectd receives from (a)-(d): every delivery but (b)'s
# deferral, which Postfix refuses before it connects and does not report.
REPORTED_SESSIONS = 7


@pytest.fixture(scope="module")
def reports(lab310: Lab310, deliveries: dict[str, Delivery]) -> Reports:
    """Close the collectd's day, fetch it, and let tlsrpt-reportd mail the reports."""
    reporter, lab = lab310.reporter, lab310.lab
    rows = reporter.wait_sessions(REPORTED_SESSIONS)
    assert sum(row["total"] for row in rows) == REPORTED_SESSIONS, (rows, _diagnostics(lab310))
    day = reporter.close_day()

    listing = reporter.fetch(day)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    # Fetcher protocol: version, collectd time, the finished day, domains, ".".
    assert lines[2] == day
    assert lines[-1] == "."
    fetched_domains = lines[3:-1]
    fetched = {}
    for domain in fetched_domains:
        details = reporter.fetch(day, domain)
        assert details.returncode == 0, details.stderr
        fetched[domain] = json.loads(details.stdout)

    def report_mails() -> list[Any]:
        return [m for m in lab.receiver.messages() if m.listener == f"{REPORTS_IP}:25"]

    reporter.run_reportd(
        sendmail=f"/usr/sbin/sendmail -C {lab310.postfix.config_dir} -i -t",
        organization="mtasts-fast tests",
        contact="tlsrpt@sender.mtasts-e2e.test",
        sender="tlsrpt-noreply@sender.mtasts-e2e.test",
        done=lambda: len(report_mails()) >= len(fetched_domains),
    )
    mails: dict[str, EmailMessage] = {}
    documents: dict[str, dict[str, Any]] = {}
    for message in report_mails():
        parsed = email.message_from_bytes(message.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        domain = str(parsed["TLS-Report-Domain"])
        mails[domain] = parsed
        (attachment,) = [p for p in parsed.iter_attachments()]
        assert attachment.get_content_type() == "application/tlsrpt+gzip"
        payload = attachment.get_payload(decode=True)
        assert isinstance(payload, bytes)
        documents[domain] = json.loads(gzip.decompress(payload))
    # Kept beside the lab's files (pytest keeps the last runs' tmp dirs) for a look.
    saved = lab.root.parent / "reports"
    saved.mkdir(exist_ok=True)
    for domain, document in documents.items():
        (saved / f"{domain}.json").write_text(json.dumps(document, indent=2))
    return Reports(day, fetched_domains, fetched, mails, documents)


def _sts_policy(dest: Destination) -> dict[str, Any]:
    return {
        "policy-type": "sts",
        "policy-string": dest.policy_lines(),
        "policy-domain": dest.domain,
        "mx-host": list(dest.policy_mx or (dest.mx_host,)),
    }


def _only_policy(report: dict[str, Any]) -> dict[str, Any]:
    (policy,) = report["policies"]
    assert isinstance(policy, dict)
    return policy


def test_e_every_reported_domain_is_fetched_and_mailed(reports: Reports) -> None:
    expected = {d.domain for d in DESTINATIONS}
    assert set(reports.fetched_domains) == expected
    assert set(reports.mails) == expected
    assert set(reports.json) == expected


def test_e_report_mail_is_rfc_8460(reports: Reports) -> None:
    """RFC 8460 §5.3: the mail's headers, media types and the file name."""
    mail = reports.mails[ENFORCE_OK.domain]
    assert mail.get_content_type() == "multipart/report"
    assert mail.get_param("report-type") == "tlsrpt"
    assert str(mail["TLS-Required"]) == "No"  # RFC 8689, RFC 8460 §5.3.1
    assert str(mail["TLS-Report-Submitter"]) == "sender.mtasts-e2e.test"
    assert str(mail["Subject"]).startswith(
        "Report Domain: enforce-ok.test Submitter: sender.mtasts-e2e.test Report-ID: <"
    )
    (attachment,) = list(mail.iter_attachments())
    start = reports.json[ENFORCE_OK.domain]["date-range"]["start-datetime"]
    assert start == f"{reports.day}T00:00:00Z"
    filename = attachment.get_filename() or ""
    assert filename.startswith("sender.mtasts-e2e.test!enforce-ok.test!")
    assert filename.endswith(".json.gz")


def test_e_report_header_fields(reports: Reports) -> None:
    report = reports.json[ENFORCE_OK.domain]
    assert report["organization-name"] == "mtasts-fast tests"
    assert report["contact-info"] == "tlsrpt@sender.mtasts-e2e.test"
    assert report["date-range"] == {
        "start-datetime": f"{reports.day}T00:00:00Z",
        "end-datetime": f"{reports.day}T23:59:59Z",
    }
    assert report["report-id"].endswith("_enforce-ok.test")


def test_e_enforce_success(reports: Reports) -> None:
    policy = _only_policy(reports.json[ENFORCE_OK.domain])
    assert policy["policy"] == _sts_policy(ENFORCE_OK)
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 0,
    }
    assert policy["failure-details"] == []


def test_e_unlisted_mx(reports: Reports) -> None:
    """(b): only the plain zone's delivery, as no-policy-found; the refusal is not reported."""
    policy = _only_policy(reports.json[UNLISTED_MX.domain])
    assert policy["policy"] == {
        "policy-type": "no-policy-found",
        "policy-domain": UNLISTED_MX.domain,
    }
    assert policy["summary"]["total-successful-session-count"] == 1
    assert policy["summary"]["total-failure-session-count"] == 0


@pytest.mark.parametrize(
    ("dest", "ip", "result_type"),
    [
        pytest.param(WRONG_NAME, WRONG_NAME_IP, "certificate-host-mismatch", id="c-wrong-name"),
        pytest.param(NO_STARTTLS, PLAIN_IP, "starttls-not-supported", id="c-no-starttls"),
        pytest.param(
            TESTING_UNTRUSTED, UNTRUSTED_IP, "validation-failure", id="d-testing-untrusted"
        ),
    ],
)
def test_e_failures(reports: Reports, dest: Destination, ip: str, result_type: str) -> None:
    policy = _only_policy(reports.json[dest.domain])
    assert policy["policy"] == _sts_policy(dest)
    assert policy["summary"] == {
        "total-successful-session-count": 0,
        "total-failure-session-count": 1,
    }
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == result_type
    assert detail["receiving-mx-hostname"] == dest.mx_host
    assert detail["receiving-ip"] == ip
    assert detail["sending-mta-ip"] == "127.0.0.1"
    assert detail["failed-session-count"] == 1
    assert detail["receiving-mx-helo"].startswith("250-")


@pytest.mark.parametrize(
    "dest",
    [
        pytest.param(TESTING_WRONG_NAME, id="d-testing-wrong-name"),
        pytest.param(TESTING_UNLISTED_MX, id="d-testing-unlisted-mx"),
    ],
)
def test_e_testing_sessions_that_postfix_does_not_check(
    reports: Reports, dest: Destination
) -> None:
    """Reported under the testing policy, as successes: at "may" Postfix checks no names."""
    policy = _only_policy(reports.json[dest.domain])
    assert policy["policy"] == _sts_policy(dest)
    assert "mode: testing" in policy["policy"]["policy-string"]
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 0,
    }


def test_e_fetcher_counts_match_the_reports(reports: Reports) -> None:
    """What tlsrpt-fetcher hands reportd, per domain, adds up to each report's summary."""
    for domain, fetched in reports.fetched.items():
        assert fetched["d"] == domain
        (per_record,) = fetched["policies"].values()
        total = sum(entry["cntrtotal"] for entry in per_record.values())
        failures = sum(entry["cntrfailure"] for entry in per_record.values())
        summary = _only_policy(reports.json[domain])["summary"]
        assert total == (
            summary["total-successful-session-count"] + summary["total-failure-session-count"]
        )
        assert failures == summary["total-failure-session-count"]


def test_e_sessions_match_the_log(lab310: Lab310, deliveries: dict[str, Delivery]) -> None:
    """Each reported session is one "TLSRPT: status=" line of smtp(8)."""
    log = lab310.postfix.log()
    statuses = [
        line for line in log.splitlines() if "postfix/smtp[" in line and "TLSRPT: status=" in line
    ]
    per_domain = {d.domain: 0 for d in DESTINATIONS}
    for line in statuses:
        for domain in per_domain:
            if f"domain={domain}," in line:
                per_domain[domain] += 1
    assert per_domain == {
        ENFORCE_OK.domain: 1,
        UNLISTED_MX.domain: 1,
        WRONG_NAME.domain: 1,
        NO_STARTTLS.domain: 1,
        TESTING_UNTRUSTED.domain: 1,
        TESTING_WRONG_NAME.domain: 1,
        TESTING_UNLISTED_MX.domain: 1,
    }
    assert len(deliveries) == len(per_domain) + 1  # (b) twice, one of them unreported
