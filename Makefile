# cachesvc: `make run` serves on 127.0.0.1:5000; `make test` installs everything the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Real registry clients the end-to-end tests drive, the peer registry benchmarks compare against, and the
# load generators they use (wrk; ab from apache2-utils, because wrk cannot complete HEAD requests). pigz: dockerd
# decompresses layers with unpigz when it is on PATH, and builder-image's builders have it.
DEBIAN_TEST_PACKAGES := skopeo buildah docker.io docker-registry busybox-static umoci wrk apache2-utils shellcheck \
	e2fsprogs xfsprogs util-linux iproute2 procps systemd openssl chromium zstd pigz

.PHONY: run install install-test install-bench system-deps test lint bench bench-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test pyproject.toml
	$(PIP) install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-bench: $(VENV)/.installed-bench

run: install
	$(VENV)/bin/cachesvc serve

# Debian packages for the real-client tests; installs only what is missing (needs root, as CI is).
system-deps:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

lint: install-test
	$(VENV)/bin/ruff check cachesvc tests benchmarks

test: install-test system-deps lint
	$(VENV)/bin/pytest -q -ra

# Full benchmarks (about 1.5 hours): registry vs distribution, end-to-end builds, eviction at scale (1M blobs),
# compression at rest, the shared tier, and a 10-minute soak. Results: benchmarks/results/.
bench: install-bench system-deps
	$(PY) -m benchmarks.run --full
	$(PY) -m benchmarks.build_bench --full
	$(PY) -m benchmarks.eviction_bench --out benchmarks/results
	$(PY) -m benchmarks.compression_bench --out benchmarks/results
	$(PY) -m benchmarks.remote_bench
	$(PY) -m benchmarks.soak --minutes 10 --out benchmarks/results

# A few minutes' version of the registry, build and eviction benchmarks (CI runs it).
bench-smoke: install-bench system-deps
	$(PY) -m benchmarks.run --smoke
	$(PY) -m benchmarks.build_bench --smoke
	$(PY) -m benchmarks.eviction_bench --smoke --out benchmarks/results

clean:
	rm -rf $(VENV) .cachesvc-data .pytest_cache .ruff_cache
