# The README's quick start: two commands on a fresh Debian machine with Python 3.11+.
#   make run        set up, then serve the app on the bundled models (http://127.0.0.1:7860)
#   make test       set up (and Debian's Chromium for the page test), then lint and run every test (CI)
#   make test-fast  lint and the fast tier: pytest -m "not slow" (no servers, browser, training, torchrun)
# Both are idempotent: the virtual environment is made once and reinstalled only when
# requirements.txt changes; Chromium is installed only when it is missing.

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test test-fast lint setup chromium
TEST_ENV := GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/python app.py

test: setup chromium lint
	$(TEST_ENV) $(VENV)/bin/python -m pytest

test-fast: setup lint
	$(TEST_ENV) $(VENV)/bin/python -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

setup: $(INSTALLED)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV) || { $(APT) update -qq && $(APT) install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(VENV)/bin/pip install -q -r requirements.txt
	touch $@

chromium:
	@command -v chromium >/dev/null || { $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; }
