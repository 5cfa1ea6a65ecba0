"""A receiving SMTP server for the delivery tests (aiosmtpd), with or without STARTTLS.

It runs as asyncio servers in an event loop the caller owns (the end-to-end
test's loop inside its network namespace) and records, for every transaction
it sees, whether it happened inside TLS. That record is how a test proves
"nothing was sent in clear": a ``MAIL FROM`` on a plaintext connection is
exactly the downgrade MTA-STS exists to prevent (RFC 8461 §5).

    receiver = Receiver()
    await receiver.listen("127.0.1.1", 25, hostname="mx.example.test", tls=ctx)
    ...
    receiver.messages_for("example.test")  # the messages that reached it
    await receiver.close()
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Message", "Receiver", "Transaction"]


@dataclass(frozen=True)
class Transaction:
    """One ``MAIL FROM`` the server accepted."""

    listener: str  # "ip:port" it arrived on
    sender: str
    tls: bool  # the command came inside a STARTTLS session


@dataclass(frozen=True)
class Message:
    """One message the server accepted (after ``DATA``)."""

    listener: str
    sender: str
    recipients: tuple[str, ...]
    tls: bool
    tls_version: str | None
    content: bytes


class _Handler:
    """aiosmtpd hooks: accept everything, remember everything."""

    def __init__(self, owner: Receiver, listener: str) -> None:
        self._owner = owner
        self._listener = listener

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # With this hook present aiosmtpd leaves filling the envelope to us.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self._owner._record(Transaction(self._listener, address, session.ssl is not None))
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        if isinstance(content, str):
            content = content.encode()
        tls_version = None
        if session.ssl is not None:
            ssl_object = session.ssl.get("ssl_object")
            if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
                tls_version = ssl_object.version()
        self._owner._record(
            Message(
                self._listener,
                envelope.mail_from or "",
                tuple(envelope.rcpt_tos),
                session.ssl is not None,
                tls_version,
                content or b"",
            )
        )
        return "250 2.0.0 Ok: queued by the test receiver"


class Receiver:
    """SMTP listeners sharing one record of transactions and messages.

    The record is guarded by a lock: the servers append from their event loop
    thread while the test reads from its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transactions: list[Transaction] = []
        self._messages: list[Message] = []
        self._servers: list[asyncio.Server] = []

    async def listen(
        self, host: str, port: int, *, hostname: str, tls: ssl.SSLContext | None
    ) -> None:
        """Serve SMTP on ``host:port``; STARTTLS is offered only with ``tls``.

        ``hostname`` is the banner/EHLO name; giving it keeps aiosmtpd from
        calling ``socket.getfqdn()``, a DNS lookup of its own.
        """
        loop = asyncio.get_running_loop()
        listener = f"{host}:{port}"

        def factory() -> SMTP:
            return SMTP(
                _Handler(self, listener),
                hostname=hostname,
                tls_context=tls,
                # Plaintext transactions are accepted on purpose, so that a
                # client that skips STARTTLS is recorded rather than refused.
                require_starttls=False,
                loop=loop,
            )

        server = await loop.create_server(factory, host, port, reuse_address=True)
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def _record(self, item: Transaction | Message) -> None:
        with self._lock:
            if isinstance(item, Message):
                self._messages.append(item)
            else:
                self._transactions.append(item)

    def transactions(self) -> list[Transaction]:
        with self._lock:
            return list(self._transactions)

    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def messages_for(self, domain: str) -> list[Message]:
        """Messages with a recipient in ``domain``."""
        suffix = "@" + domain.lower()
        return [m for m in self.messages() if any(r.lower().endswith(suffix) for r in m.recipients)]

    def plaintext_transactions(self) -> list[Transaction]:
        """Every ``MAIL FROM`` that arrived outside TLS."""
        return [t for t in self.transactions() if not t.tls]
