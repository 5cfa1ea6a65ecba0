"""The ``default_zone`` section and the ``zones`` map of socketmap names to zone settings.

A new zone key goes in :data:`ZONE_KEYS` and :func:`zone_config` here, and
as a field of :class:`~mtasts_fast.config.model.ZoneConfig`.

:func:`socketmap_zones` adds postfix-tlspol's two map names to the configured
zones, so that its ``main.cf`` lines work unchanged: ``QUERYwithTLSRPT`` is the
default zone with ``tlsrpt: true``, ``QUERY`` the default zone. A zone the file
configures under either name wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from .. import defaults
from .model import DANE_MODES, ZoneConfig
from .sections import Section, join_path
from .values import boolean, describe, fail, one_of, positive, string

#: ``tlsrpt_testing_level``: NOTFOUND, or the Postfix level a testing policy is
#: reported at (README "Postfix 3.10 and TLSRPT" explains each).
TESTING_LEVELS = ("notfound", "may", "encrypt", "dane")

#: postfix-tlspol's socketmap names (its README's ``main.cf`` lines).
TLSPOL_QUERY = "QUERY"
TLSPOL_QUERY_WITH_TLSRPT = "QUERYwithTLSRPT"


def dane_mode(value: object, path: str) -> str:
    if value is False:
        # YAML 1.1 reads an unquoted `off` as false.
        return "off"
    if isinstance(value, bool):
        fail(path, f"expected one of {', '.join(DANE_MODES)}, got {describe(value)}")
    text = string(value, path)
    if text not in DANE_MODES:
        fail(path, f"expected one of {', '.join(DANE_MODES)}, got {describe(text)}")
    return text


ZONE_KEYS = (
    "strict_testing",
    "timeout",
    "require_sni",
    "tlsrpt",
    "tlsrpt_testing_level",
    "dane",
)


def zone_config(value: object, path: str) -> ZoneConfig:
    # Every zone starts from the built-in defaults, never from default_zone:
    # that is what the old daemon does, and configs rely on it.
    section = Section(value, path, ZONE_KEYS)
    return ZoneConfig(
        strict_testing=section.get("strict_testing", boolean, defaults.STRICT_TESTING),
        timeout=section.get("timeout", positive, defaults.ZONE_TIMEOUT),
        require_sni=section.get("require_sni", boolean, defaults.REQUIRE_SNI),
        tlsrpt=section.get("tlsrpt", boolean, defaults.TLSRPT),
        tlsrpt_testing_level=section.get(
            "tlsrpt_testing_level", one_of(TESTING_LEVELS), defaults.TLSRPT_TESTING_LEVEL
        ),
        dane=section.get("dane", dane_mode, defaults.DANE),
    )


def zone_configs(value: object, path: str) -> Mapping[str, ZoneConfig]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        fail(path, f"expected a mapping of zone names to zone settings, got {describe(value)}")
    zones = {}
    for name, zone in value.items():
        where = join_path(path, name)
        if not isinstance(name, str):
            fail(where, "a zone name must be a string (quote it)")
        if not name:
            fail(where, "a zone name must not be empty")
        if any(ch.isspace() for ch in name):
            # Postfix sends "<map name> <key>": a name with a space never arrives.
            fail(where, "a zone name must not contain spaces")
        zones[name] = zone_config(zone, where)
    return MappingProxyType(zones)


def socketmap_zones(
    default_zone: ZoneConfig, zones: Mapping[str, ZoneConfig]
) -> dict[str, ZoneConfig]:
    """The zone of every socketmap name with settings of its own (others: default zone).

    The configured ``zones``, plus postfix-tlspol's ``QUERYwithTLSRPT`` (the
    default zone with TLSRPT attributes: only a Postfix that asks for them by
    that name gets them) and ``QUERY`` (the default zone), unless configured.
    """
    builtin = {
        TLSPOL_QUERY: default_zone,
        TLSPOL_QUERY_WITH_TLSRPT: dataclasses.replace(default_zone, tlsrpt=True),
    }
    return {**builtin, **zones}
