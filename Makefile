# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VAE := $(VENV)/bin/vae
STAMP := $(VENV)/.installed
DEMO := demo

.PHONY: sysdeps venv demo test test-slow test-container lint protos protos-check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later can resolve a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,serve,dev]"
	touch $(STAMP)

venv: $(STAMP)

# System packages the test suite uses for real: a Prometheus server + promtool (the real scrape and the
# alert rules). Installed when missing and apt-get is usable; the tests that need them skip otherwise.
sysdeps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "warning: could not install prometheus; the real-scrape tests will skip"; \
	  else echo "note: prometheus not installed (needs root + apt-get); the real-scrape tests will skip"; fi; \
	fi

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO)

test: $(STAMP) sysdeps
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-container: $(STAMP)
	$(PY) -m pytest -q -m container

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy contracts service exporter client

protos: $(STAMP)
	$(PY) protos/generate.py

protos-check: $(STAMP)
	$(PY) protos/generate.py --check

bench: $(STAMP)
	set -e; for f in bench/*.py; do echo "== $$f"; $(PY) $$f; done

clean:
	rm -rf $(VENV) $(DEMO) .bench
