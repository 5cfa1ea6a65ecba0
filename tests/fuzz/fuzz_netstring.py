"""Atheris target: the compiled netstring decoder against its pure-Python twin.

Run through ``make fuzz`` (``tests/fuzz/run.py``), which builds the two
extensions with AddressSanitizer into ``.fuzz-build/`` and starts this file
with the sanitizer runtime preloaded. Standalone::

    FUZZ_BUILD=.fuzz-build python tests/fuzz/fuzz_netstring.py CORPUS_DIR...

Input layout (so that a seed file is readable): the first byte selects the
parser limit (low three bits) and how the rest is cut into ``feed()`` chunks
(high five bits, a seed for the cut points); the remaining bytes are the
stream a client sent. For every input:

- both decoders get the same chunks; per-feed results, the error class, the
  error's ``payloads`` and ``pending`` must be identical, and a dead parser
  must raise the same class again with no payloads;
- every decoded payload re-encodes to the same frame with both encoders and
  decodes back to itself;
- the matcher twins (``_matcher`` against ``matcher``) agree on the payloads
  and the raw stream read as host names and MX patterns, as the daemon would
  after decoding a key.

A difference is an ``AssertionError`` (libFuzzer reports it as a crash and
saves the input); a memory error in the compiled code is reported by ASan.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    import mtasts_fast
    from mtasts_fast import errors

    # The sanitizer build must win over the in-place extensions next to the
    # .pyx files (which other work in this tree uses): search it first.
    _build = os.environ.get("FUZZ_BUILD")
    if _build:
        mtasts_fast.__path__.insert(0, str(Path(_build).resolve() / "mtasts_fast"))
    from mtasts_fast import _matcher, _netstring, matcher, netstring

if _build:
    for _module in (_netstring, _matcher):
        if not str(_module.__file__).startswith(str(Path(_build).resolve())):
            raise SystemExit(f"{_module.__name__} loaded from {_module.__file__}, not {_build}")

LIMITS = (0, 1, 5, 9, 10, 100, 10_000, 2**31 - 1)


def chunks_of(stream: bytes, selector: int) -> list[bytes]:
    """Cut ``stream`` at points chosen by ``selector`` (0: one chunk, 1: bytes)."""
    if selector == 0 or not stream:
        return [stream]
    if selector == 1:
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(selector * 1_000_003 + len(stream))
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randint(1, 12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def run(parser: Any, chunks: list[bytes]) -> tuple[Any, ...]:
    results: list[list[bytes]] = []
    for chunk in chunks:
        try:
            results.append(parser.feed(chunk))
        except errors.NetstringError as exc:
            try:
                parser.feed(b"1:a,")
            except errors.NetstringError as again:
                if type(again) is not type(exc) or again.payloads != []:
                    raise AssertionError(f"dead parser raised {again!r}") from None
            else:
                raise AssertionError("dead parser accepted more input") from None
            return results, type(exc), exc.payloads, parser.pending
    return results, None, [], parser.pending


def check_matcher(texts: list[str]) -> None:
    host = texts[0]
    for name in texts:
        for c, py in (
            (_matcher.is_valid_hostname, matcher.is_valid_hostname_py),
            (_matcher.is_valid_mx_pattern, matcher.is_valid_mx_pattern_py),
        ):
            if c(name) != py(name):
                raise AssertionError(f"{c.__name__}({name!r}) differs")
        if _matcher.mx_matches(host, name) != matcher.mx_matches_py(host, name):
            raise AssertionError(f"mx_matches({host!r}, {name!r}) differs")
    if _matcher.match_any(host, texts[1:]) != matcher.match_any_py(host, texts[1:]):
        raise AssertionError(f"match_any({host!r}, {texts[1:]!r}) differs")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    limit = LIMITS[data[0] & 7]
    stream = data[1:]
    chunks = chunks_of(stream, data[0] >> 3)
    expected = run(netstring.NetstringParserPy(limit), chunks)
    got = run(_netstring.NetstringParserC(limit), chunks)
    if got != expected:
        raise AssertionError(f"C {got!r} != Python {expected!r} for chunks {chunks!r}")

    payloads = [p for feed in expected[0] for p in feed] + list(expected[2])
    for payload in payloads:
        frame = _netstring.encodeC(payload)
        if frame != netstring.encode_py(payload):
            raise AssertionError(f"encodeC({payload!r}) differs")
        if _netstring.NetstringParserC(len(payload)).feed(frame) != [payload]:
            raise AssertionError(f"round trip of {payload!r} failed")

    # Keys as the daemon splits them ("<map> <key>"), and the raw stream as
    # lines, with invalid UTF-8 kept as lone surrogates (the slow path).
    texts = [p.decode("utf-8", "surrogateescape").partition(" ")[2] for p in payloads]
    texts += stream.decode("utf-8", "surrogateescape").split("\n")[:16]
    check_matcher(texts)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
