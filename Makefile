# rtlake — the two set-up commands on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Debian packages the tests drive for real: a PACS (Orthanc + DICOMweb), a second DIMSE peer (dcmtk),
# a browser for the report checks (chromium) and a fake clock for date-dependent runs (faketime).
APT_PACKAGES := orthanc orthanc-dicomweb dcmtk chromium faketime
PYTEST_ARGS ?=

.PHONY: install demo test test-all reliability bench system-deps clean

$(STAMP): pyproject.toml ingest/_dicomwalk.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Install Orthanc, its DICOMweb plugin, dcmtk, chromium and faketime when missing (needs root or sudo; CI runs as root).
system-deps:
	@missing=""; \
	command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v dcmqrscp >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  ($$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(APT_PACKAGES)) >/tmp/rtlake-apt.log 2>&1 \
	    || echo "WARNING: could not install$$missing (see /tmp/rtlake-apt.log); PACS/browser tests will be SKIPPED"; \
	fi

## Generate a synthetic cohort in ./demo and run the whole update on the embedded default.
demo: install
	rm -rf demo
	$(VENV)/bin/rtlake demo demo
	@echo; echo "lake: demo/lake   catalog: demo/state/catalog.duckdb   outbox: demo/outbox"

## The suite CI runs (< 15 min on 2 cores): everything but the long suites. Includes the browser checks
## of the HTML reports (tests/test_browser_*.py); their screenshots are kept in build/browser/.
test: install system-deps
	$(PY) -m pytest -m "not slow and not reliability" $(PYTEST_ARGS)

## Long suites: full kill-and-resume and fault-injection figures.
reliability: install system-deps
	$(PY) -m pytest -m "reliability" $(PYTEST_ARGS)
	$(PY) scripts/reliability_report.py

test-all: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks print a ratio against a raw baseline measured in the same run.
bench: install system-deps
	@for b in scripts/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo .pytest_cache build *.egg-info
