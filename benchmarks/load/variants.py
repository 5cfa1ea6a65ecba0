"""``run.py --variant``: more configurations or source trees of ours, measured in the same run.

Two kinds, combinable (``NAME@TREE:KEY=VALUE,...``):

- ``NAME:KEY=VALUE[,KEY=VALUE...]``: ours with configuration overrides. KEY
  is a dotted path into the daemon's YAML (``default_zone.dane``,
  ``metrics``); VALUE is read as JSON when it parses (``5``, ``true``,
  ``{"port": 9100}``), else taken as a string (``off``); ``null`` removes
  the key (``metrics=null``: no metrics listener).
- ``NAME@TREE``: ours from another source tree, with its own ``.venv``. TREE
  is a directory, or a commit (anything ``git rev-parse`` accepts): a
  detached git worktree of it is added under ``benchmarks/.trees/<12 hex>/``
  (ignored by git) and its ``.venv`` built with its own ``make compile``,
  once; later runs reuse it. Keys of the configuration that tree does not
  know (``metrics`` before the metrics merge) are dropped after asking its
  ``mta-sts-daemon --check-config``, and the report says which.

A variant runs everything of ours from its venv (the daemon, ``mta-sts-cache
import``, the launchers and the DANE seeding, this directory's code under its
interpreter) and gets its own LMDB cache.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from runner import BENCH, OUR_VENV, ROOT, log

TREES = BENCH / ".trees"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_UNKNOWN_KEY = re.compile(r": ([A-Za-z0-9_.]+): unknown key")
RESERVED = ("ours", "peer", "ref")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    tree_spec: str | None = None
    """TREE as given (a directory or a commit); resolved by :func:`prepare`."""
    tree: Path | None = None
    commit: str | None = None
    dropped: tuple[str, ...] = ()
    """Configuration keys the tree does not know, removed from its configuration."""

    @property
    def venv(self) -> Path:
        return self.tree / ".venv" if self.tree is not None else OUR_VENV

    def describe(self) -> str:
        parts = []
        if self.tree is not None:
            where = f"commit {self.commit[:12]}" if self.commit else str(self.tree)
            parts.append(f"ours from {where}")
        parts += [f"`{k}={json.dumps(v)}`" for k, v in self.overrides]
        if self.dropped:
            parts.append("keys that tree does not know, dropped: " + ", ".join(self.dropped))
        return "; ".join(parts) or "ours"

    def meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "overrides": dict(self.overrides),
            "tree": str(self.tree) if self.tree else None,
            "commit": self.commit,
            "dropped_keys": list(self.dropped),
            "describe": self.describe(),
        }


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def argument(text: str) -> Variant:
    """:func:`parse` as an argparse type: a bad variant is a usage error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse(text: str) -> Variant:
    """``NAME:KEY=VALUE,...``, ``NAME@TREE`` or ``NAME@TREE:KEY=VALUE,...``
    (argparse type: raises ValueError with the reason)."""
    head, colon, rest = text.partition(":")
    name, at, tree = head.partition("@")
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(
            f"{name!r}: a variant needs a name of letters, digits, '_', '.', '-' "
            f"(not {', '.join(RESERVED)})"
        )
    if at and not tree:
        raise ValueError(f"{text!r}: nothing after '@' (a directory or a commit)")
    overrides = []
    for item in filter(None, rest.split(",")) if colon else ():
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise ValueError(f"{item!r}: expected KEY=VALUE with a dotted KEY")
        overrides.append((key, parse_value(value)))
    if not overrides and not at:
        raise ValueError(f"{text!r}: give NAME:KEY=VALUE,... and/or NAME@TREE")
    return Variant(name, tuple(overrides), tree or None)


def apply(config: dict[str, Any], overrides: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """A copy of ``config`` with each dotted key set (``None``: removed)."""
    out = copy.deepcopy(config)
    for key, value in overrides:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def remove(config: dict[str, Any], key: str) -> None:
    node: Any = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


# --------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve_tree(spec: str) -> tuple[Path, str | None]:
    """The source tree for TREE (made from a commit if need be), its commit, and a built venv."""
    path = Path(spec).expanduser()
    if path.is_dir():
        tree = path.resolve()
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True)
        commit = head.stdout.decode().strip() or None
    else:
        commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
        tree = TREES / commit[:12]
        if not tree.exists():
            TREES.mkdir(exist_ok=True)
            (TREES / ".gitignore").write_text("*\n")  # nothing in here is the project's
            log(f"adding a git worktree of {commit[:12]} at {tree.relative_to(ROOT)}")
            _git("worktree", "add", "--detach", str(tree), commit)
    if not (tree / "Makefile").exists():
        raise RuntimeError(f"{tree}: not a source tree of mtasts-fast (no Makefile)")
    if not (tree / ".venv" / ".installed").exists():
        log(f"building {tree}/.venv with its `make compile` (once; a few minutes)")
    done = subprocess.run(["make", "-C", str(tree), "compile"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"make compile in {tree} failed:\n{done.stdout[-2000:]}{done.stderr}")
    return tree, commit


def prepare(variant: Variant) -> Variant:
    """``variant`` with its tree resolved and built (no-op without one)."""
    if variant.tree_spec is None:
        return variant
    tree, commit = resolve_tree(variant.tree_spec)
    return dataclasses.replace(variant, tree=tree, commit=commit)


def fit_config(variant: Variant, config: dict[str, Any], path: Path) -> Variant:
    """Write ``config`` (with the variant's overrides) to ``path``, without the keys the
    variant's tree does not know; the variant, with those keys in ``dropped``."""
    config = apply(config, variant.overrides)
    dropped = list(variant.dropped)
    for key in dropped:
        remove(config, key)
    daemon = str(variant.venv / "bin" / "mta-sts-daemon")
    for _ in range(10):
        path.write_text(json.dumps(config, indent=2) + "\n")
        done = subprocess.run(
            [daemon, "--check-config", "-c", str(path)], capture_output=True, text=True
        )
        if done.returncode == 0:
            return dataclasses.replace(variant, dropped=tuple(dropped))
        unknown = _UNKNOWN_KEY.search(done.stderr)
        if variant.tree is None or unknown is None or unknown.group(1) in dict(variant.overrides):
            raise RuntimeError(f"variant {variant.name}: {done.stderr.strip()}")
        key = unknown.group(1)
        log(f"variant {variant.name}: its tree does not know `{key}`: dropped")
        dropped.append(key)
        remove(config, key)
    raise RuntimeError(f"variant {variant.name}: {path} still refused: {done.stderr.strip()}")
