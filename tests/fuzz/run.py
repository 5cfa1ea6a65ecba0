#!/usr/bin/env python3
"""``make fuzz``: build the extensions with AddressSanitizer and run the atheris target.

Steps (tests/fuzz/README.md explains the choices):

1. ``.fuzz-venv/``: a virtualenv of its own with atheris (a manylinux wheel
   from PyPI, libFuzzer included) and Cython, so the development venv is
   never touched.
2. ``.fuzz-build/``: ``_netstring.pyx`` and ``_matcher.pyx`` translated by
   Cython (with setup.py's release directives: no bounds checks, no
   wraparound, so ASan sees what production runs) and compiled with
   ``-fsanitize=address`` into ``.fuzz-build/mtasts_fast/``. The extensions
   built in place beside the .pyx files are left alone. With clang the code
   also gets ``-fsanitize=fuzzer-no-link``, so libFuzzer is guided by the C
   code's edge coverage too; with gcc only the Python twin's coverage guides it.
3. Runs ``tests/fuzz/fuzz_netstring.py`` for ``FUZZ_SECONDS`` (600) with the
   sanitizer runtime in ``LD_PRELOAD`` (a Python that is not itself built with
   ASan must load it first) and ``PYTHONMALLOC=malloc`` (so bytes objects come
   from malloc, where ASan can see their bounds, not from pymalloc's arenas).
   New inputs go to ``.fuzz-build/corpus/netstring``; the committed seeds in
   ``tests/fuzz/corpus/netstring`` are read only. A crash is saved under
   ``.fuzz-build/artifacts/`` and makes this script exit non-zero.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".fuzz-venv"
BUILD = ROOT / ".fuzz-build"
PY = VENV / "bin" / "python"
SEEDS = ROOT / "tests" / "fuzz" / "corpus" / "netstring"
TARGET = ROOT / "tests" / "fuzz" / "fuzz_netstring.py"
MODULES = ("_netstring", "_matcher")


def sh(cmd: list[str], **kw: object) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def make_venv() -> None:
    if (VENV / ".ready").exists():
        return
    sh([sys.executable, "-m", "venv", str(VENV)])
    sh([str(PY), "-m", "pip", "install", "--quiet", "atheris>=2.3", "Cython>=3.0.10,<4"])
    (VENV / ".ready").touch()


def query(code: str) -> str:
    return subprocess.run(
        [str(PY), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def build() -> tuple[str, str]:
    """Build the sanitizer copies; return (compiler, runtime to preload)."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    cc = os.environ.get("FUZZ_CC") or clang or "gcc"
    flags = ["-g", "-O1", "-fno-omit-frame-pointer", "-fPIC"]
    if "clang" in Path(cc).name:
        flags.append("-fsanitize=address,fuzzer-no-link")
        atheris_dir = query("import atheris; print(atheris.path())")
        runtime = str(Path(atheris_dir) / "asan_with_fuzzer.so")
    else:
        flags.append("-fsanitize=address")
        runtime = subprocess.run(
            [cc, "-print-file-name=libasan.so"], check=True, capture_output=True, text=True
        ).stdout.strip()
    include = query("import sysconfig; print(sysconfig.get_paths()['include'])")
    suffix = query("import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    out = BUILD / "mtasts_fast"
    src = BUILD / "src"
    out.mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        c_file = src / f"{name}.c"
        # -o keeps the generated C out of the source tree (other work there
        # builds from it); the directives are setup.py's release ones.
        sh(
            [
                str(VENV / "bin" / "cython"),
                "-3",
                "--directive",
                "boundscheck=False,wraparound=False",
                "--module-name",
                f"mtasts_fast.{name}",
                "-o",
                str(c_file),
                str(ROOT / "mtasts_fast" / f"{name}.pyx"),
            ]
        )
        obj = src / f"{name}.o"
        sh([cc, *flags, f"-I{include}", "-c", "-o", str(obj), str(c_file)])
        # Linked without the sanitizer runtime: its symbols come from the
        # preloaded library at run time (Debian's clang lacks the static
        # libclang_rt.asan_static unless libclang-rt-14-dev is installed).
        sh([cc, "-shared", "-o", str(out / f"{name}{suffix}"), str(obj)])
    return cc, runtime


def main() -> int:
    seconds = int(os.environ.get("FUZZ_SECONDS", "600"))
    if sysconfig.get_config_var("Py_DEBUG"):
        print("note: debug Python", flush=True)
    make_venv()
    cc, runtime = build()
    corpus = BUILD / "corpus" / "netstring"
    artifacts = BUILD / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=runtime,
        PYTHONMALLOC="malloc",
        # CPython keeps most objects to the end; leak reports would be noise.
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1",
        FUZZ_BUILD=str(BUILD),
    )
    env.pop("MTASTS_NO_EXTENSIONS", None)
    cmd = [
        str(PY),
        str(TARGET),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        "-max_len=4096",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        str(corpus),
        str(SEEDS),
    ]
    print(f"fuzzing for {seconds} s (compiler {cc}, preload {runtime})", flush=True)
    log_path = BUILD / "fuzz-netstring.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            # Progress lines arrive by the thousand; show the milestones.
            if not line.startswith("#") or "pulse" in line or "DONE" in line:
                print(line, end="", flush=True)
        code = proc.wait()
    text = log_path.read_text()
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\S+)", text)
    runs = re.findall(r"Done (\d+) runs in (\d+) second", text)
    print(f"\nlog: {log_path} ({time.monotonic() - started:.0f} s)")
    if done:
        execs, cov, ft, corp = done[-1]
        print(f"executions {execs}, coverage: cov {cov} ft {ft}, corpus {corp}")
    if runs:
        print(f"libFuzzer: {runs[-1][0]} runs in {runs[-1][1]} s")
    crashes = sorted(artifacts.glob("*"))
    print(f"crashes: {len(crashes)}" + "".join(f"\n  {c}" for c in crashes))
    return code if code else (1 if crashes else 0)


if __name__ == "__main__":
    sys.exit(main())
