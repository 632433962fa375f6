# Ailo Network — every target sets itself up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_JS := node_modules/.installed
STAMP_CHROMIUM := $(VENV)/.chromium
STAMP_SERVERS := $(VENV)/.servers
STAMP_LAVAPIPE := $(VENV)/.lavapipe
CORPUS := data/corpus/.fetched

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP_PY) $(STAMP_JS) $(CORPUS) $(STAMP_CHROMIUM) $(STAMP_SERVERS) $(STAMP_LAVAPIPE)

$(STAMP_PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# Pinned CPU build first, so nothing below can pull a CUDA torch.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

$(STAMP_JS): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent build  # browser bundle → ailo/web/static/
	touch $@

# Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser).
$(STAMP_CHROMIUM): | $(STAMP_PY)
	command -v chromium || { [ "$$(id -u)" = 0 ] && SUDO= || SUDO="sudo -n"; \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }
	touch $@

# Debian's nginx (chunk-mirror tests) and PostgreSQL 15 (storage tests start their own cluster).
$(STAMP_SERVERS): | $(STAMP_PY)
	{ [ -x /usr/sbin/nginx ] && [ -x /usr/lib/postgresql/15/bin/initdb ]; } || { [ "$$(id -u)" = 0 ] && SUDO= || SUDO="sudo -n"; \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y nginx-light postgresql; }
	touch $@

# Mesa's software Vulkan (lavapipe >= 24, bookworm-backports): the WebGPU adapter of Dawn (npm
# `webgpu`) on a machine without a GPU, for tests/test_webgpu.py (which fail, not skip, without it).
$(STAMP_LAVAPIPE): scripts/install-lavapipe.sh | $(STAMP_PY)
	sh scripts/install-lavapipe.sh
	touch $@

$(CORPUS): $(STAMP_PY) ailo/assets.py
	$(PY) -m ailo.assets

demo: setup
	$(PY) -m ailo.cli.main demo

test: setup
	$(PY) -m pytest -q

# The developer loop: everything but the end-to-end tests marked slow (processes, browsers,
# multi-round campaigns); `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	for b in bench/*.py; do $(PY) $$b; done

clean:
	rm -rf $(VENV) node_modules data runs artifacts
