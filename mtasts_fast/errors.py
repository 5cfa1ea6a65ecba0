"""Exceptions shared by the compiled modules and their pure-Python twins."""

from __future__ import annotations

__all__ = [
    "BadLength",
    "BadTerminator",
    "ConfigError",
    "MtastsError",
    "NetstringError",
    "PolicyError",
    "TooLong",
]


class MtastsError(Exception):
    """Base class of every error this package raises on purpose."""


class NetstringError(MtastsError):
    """A socketmap request is not a well-formed netstring.

    ``payloads`` holds the payloads that were complete in the same ``feed()``
    call before the error, so the server can still answer them (in order)
    before it closes the connection.
    """

    def __init__(self, message: str, payloads: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.payloads: list[bytes] = payloads if payloads is not None else []


class BadLength(NetstringError):
    """The length prefix has no digits or contains something other than digits."""


class BadTerminator(NetstringError):
    """The byte after the declared payload length is not ``,``."""


class TooLong(NetstringError):
    """The declared length exceeds the limit (checked while the digits arrive)."""


class PolicyError(MtastsError):
    """A TXT record or policy body breaks RFC 8461; the message says which rule."""


class ConfigError(MtastsError):
    """The configuration is unusable.

    ``str()`` gives ``file: key.path: problem`` so an operator can go straight to
    the offending line.
    """

    def __init__(self, filename: str, key_path: str, problem: str) -> None:
        self.filename = filename
        self.key_path = key_path
        self.problem = problem
        where = f"{filename}: {key_path}" if key_path else filename
        super().__init__(f"{where}: {problem}")
