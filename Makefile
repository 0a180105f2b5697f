# Everything a fresh Linux machine with Python 3.11+ needs, in two commands:
#   make demo   runs the product on the embedded PostgreSQL
#   make test   installs what the tests need and runs lint and the whole suite
# Each target creates .venv if missing and installs into it; apt-get brings what
# pip cannot (Node.js for the reference Socket.IO fixtures, Chromium for browser tests,
# redis-server and HAProxy for cluster tests).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint install node chromium cluster-tools bench clean

demo: install
	$(BIN)/presence demo

test: install node chromium cluster-tools lint
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || { \
	  echo "creating .venv failed; on Debian/Ubuntu: $(SUDO) apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

node: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

chromium:
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

cluster-tools:
	@command -v redis-server >/dev/null && command -v haproxy >/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server haproxy; }

bench: install node
	$(BIN)/python -m bench.run $(BENCH)

clean:
	rm -rf $(VENV) tests/node/node_modules .pytest_cache .ruff_cache
