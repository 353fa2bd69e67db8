# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VAE := $(VENV)/bin/vae
STAMP := $(VENV)/.installed
# tritonclient needs protobuf < 7 and the project's stubs protobuf >= 7.35: the tritonclient tests run
# it from this second venv (tritonclient and numpy only), as a subprocess against a real `vae serve`.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
DEMO := demo

.PHONY: sysdeps containerdeps venv triton-venv demo test test-slow test-container lint protos protos-check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later can resolve a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,serve,dev]"
	touch $(STAMP)

venv: $(STAMP)

$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "tritonclient[grpc]==2.73.0" numpy
	touch $(TRITON_STAMP)

triton-venv: $(TRITON_STAMP)

# System packages the test suite uses for real: a Prometheus server + promtool (the real scrape and the
# alert rules). Installed when missing and apt-get is usable; the tests that need them skip otherwise.
sysdeps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "warning: could not install prometheus; the real-scrape tests will skip"; \
	  else echo "note: prometheus not installed (needs root + apt-get); the real-scrape tests will skip"; fi; \
	fi

# System packages the real image build uses (scripts/container_test.sh): mmdebstrap makes a Debian base
# without a registry, buildah builds the Dockerfile, podman runs the image (rootless helpers and runc for
# containers inside a VM or container). Installed when missing and apt-get is usable, as for sysdeps.
CONTAINER_PACKAGES := mmdebstrap buildah podman uidmap fuse-overlayfs slirp4netns runc
containerdeps:
	@if ! command -v mmdebstrap >/dev/null || ! command -v buildah >/dev/null || ! command -v podman >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null) \
	      || { echo "error: could not install $(CONTAINER_PACKAGES)" >&2; exit 1; }; \
	  else echo "error: make test-container needs mmdebstrap, buildah and podman (as root with apt-get they are installed: apt-get install $(CONTAINER_PACKAGES))" >&2; exit 1; fi; \
	fi

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO)

test: $(STAMP) $(TRITON_STAMP) sysdeps
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-container: $(STAMP) containerdeps
	$(PY) -m pytest -q -m container

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy contracts service exporter client trainer vae_cli protos/generate.py

protos: $(STAMP)
	$(PY) protos/generate.py

protos-check: $(STAMP)
	$(PY) protos/generate.py --check

bench: $(STAMP)
	set -e; for f in bench/*.py; do echo "== $$f"; $(PY) $$f; done

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(DEMO) .bench
