"""Reading the config file's YAML: safe tags only, duplicate keys refused."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from ..errors import ConfigError
from .values import describe


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys.

    PyYAML keeps the last of two equal keys without a word, so a second
    ``default_zone:`` block would silently replace the first; YAML itself
    (1.2 §3.2.1.1) requires keys to be unique. Merge keys (``<<``) still
    override as usual.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {describe(key)}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(raw: bytes, filename: str) -> object:
    """Parse a config file's bytes; any failure is a :class:`ConfigError`."""
    try:
        return yaml.load(raw, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no object tags
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        raise ConfigError(filename, "", f"invalid YAML{where}: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            filename, "", f"invalid YAML: not {exc.encoding} text at byte {exc.position}"
        ) from None
    except RecursionError:
        raise ConfigError(filename, "", "invalid YAML: nested too deeply") from None
    except Exception as exc:
        # PyYAML lets constructor errors escape as they are: ValueError for a
        # timestamp like 2024-13-45 or an integer too long to convert, etc.
        raise ConfigError(filename, "", f"invalid YAML: {exc}") from None
