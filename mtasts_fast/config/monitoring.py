"""The ``metrics`` section and ``log_format`` (DESIGN.md §9).

``metrics`` turns the Prometheus endpoint on: ``port`` (with ``host``,
loopback by default) or ``path`` (a unix socket, with ``mode``). It may
never share the socketmap listener's address: Postfix's socketmap client
and an HTTP scraper would each get the other's protocol.
"""

from __future__ import annotations

from .. import defaults
from .model import MetricsConfig
from .sections import Section
from .values import fail, file_mode, port_number, string, word

METRICS_KEYS = ("host", "port", "path", "mode")


def metrics_config(
    value: object, path: str, *, socketmap_port: int, socketmap_path: str | None
) -> MetricsConfig:
    section = Section(value, path, METRICS_KEYS)
    port = section.optional("port", port_number)
    unix_path = section.optional("path", string)
    if port is None and unix_path is None:
        fail(path, "set port (and host) for TCP, or path for a unix socket")
    if port is not None and unix_path is not None:
        fail(section.key_path("path"), "set either port or path, not both")
    if unix_path is None and "mode" in section.items:
        fail(section.key_path("mode"), "only applies to a unix socket: set 'path' too")
    if port is not None and socketmap_path is None and port == socketmap_port:
        fail(
            section.key_path("port"),
            f"must differ from the socketmap port ({socketmap_port}): "
            "the metrics endpoint needs a listener of its own",
        )
    if unix_path is not None and unix_path == socketmap_path:
        fail(
            section.key_path("path"),
            "must differ from the socketmap socket's path: "
            "the metrics endpoint needs a listener of its own",
        )
    return MetricsConfig(
        host=section.get("host", word, defaults.METRICS_HOST),
        port=port,
        path=unix_path,
        mode=section.optional("mode", file_mode),
    )


def log_format(value: object, path: str) -> str:
    text = string(value, path)
    if text not in defaults.LOG_FORMATS:
        fail(path, f"expected one of {', '.join(defaults.LOG_FORMATS)}, got {text!r}")
    return text
