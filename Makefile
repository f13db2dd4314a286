# The README's quick start: two commands on a fresh Debian machine with Python 3.11+.
#   make run        set up, then serve the app on the bundled models (http://127.0.0.1:7860)
#   make test       set up (and Ray from requirements-ray.txt for the --ray batch test, and Debian's
#                   Chromium, PostgreSQL, Prometheus and nginx for the page, operations and proxy
#                   tests), then lint and run every test (CI)
#   make test-fast  lint and the fast tier: pytest -m "not slow" (no servers, browser, training, torchrun)
# Both are idempotent: the virtual environment is made once and reinstalled only when
# requirements.txt changes; Ray, Chromium, PostgreSQL, Prometheus and nginx are installed only when missing.

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test test-fast lint setup ray chromium postgresql prometheus nginx
TEST_ENV := GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/python app.py

test: setup ray chromium postgresql prometheus nginx lint
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

# Ray is optional (python -m skinlesion predict --ray): its own requirements file, not the app's.
ray: setup
	@$(VENV)/bin/python -c "import ray.data" 2>/dev/null || \
		PIP_DISABLE_PIP_VERSION_CHECK=1 $(VENV)/bin/pip install -q -r requirements-ray.txt

chromium:
	@command -v chromium >/dev/null || { $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; }

# Debian's postgresql, prometheus and nginx packages start a system service (a cluster on :5432, a
# Prometheus on :9090, an nginx on :80) when installed; the tests start their own throwaway servers
# on free ports and need none of them. So where the machine has no policy-rc.d, one that answers
# "don't start" (exit 101) stands in during the install and is removed after it.
define apt_install_no_start
{ policy=/usr/sbin/policy-rc.d; made=; \
  [ -e $$policy ] || { printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null \
                       && $(SUDO) chmod 755 $$policy && made=1; }; \
  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $(1) >/dev/null; status=$$?; \
  [ -z "$$made" ] || $(SUDO) rm -f $$policy; exit $$status; }
endef

postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(call apt_install_no_start,postgresql)

prometheus:
	@command -v prometheus >/dev/null || $(call apt_install_no_start,prometheus)

# nginx lives in /usr/sbin, which is not on a non-root user's PATH on Debian.
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || $(call apt_install_no_start,nginx)
