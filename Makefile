# vbook — two commands: `make lab` opens the book, `make test` checks it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NBVAL  := --nbval-current-env --nbval-cell-timeout=120 --nbval-sanitize-with chapters/nbval_sanitize.cfg -p no:cacheprovider

.PHONY: lab lab-test test bench chapters site lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make lab: create .venv, install vbook (editable) with its extras, open JupyterLab on chapters/
lab: $(STAMP)
	$(VENV)/bin/jupyter lab chapters/ $(if $(filter 0,$(shell id -u)),--allow-root)

## make test: unit, property, oracle, conformance and browser tests and nbval over every chapter,
## twice: with this machine's /dev/kvm (if any), then as on a machine without it
test: $(STAMP)
	$(VENV)/bin/pytest -q tests --nbval chapters $(NBVAL)
	@echo "--- again, as on a machine without /dev/kvm (Binder): fallbacks and skips ---"
	VBOOK_KVM_DEV=/nonexistent/kvm $(VENV)/bin/pytest -q tests --nbval chapters $(NBVAL)

## make bench: print speed figures (exits/s on unicorn and /dev/kvm, import time, chapter times)
bench: $(STAMP)
	$(PY) tools/bench.py

## make chapters: re-execute every chapter in place (stores outputs and widget state)
chapters: $(STAMP)
	$(PY) tools/execute_chapters.py chapters/*.ipynb

## make site: the book as static HTML in site/ (players inlined: no kernel, no network)
site: $(STAMP)
	$(PY) tools/build_site.py site

## make lab-test: the widgets in a real JupyterLab with live kernels (opt-in: ~60-90 s)
lab-test: $(STAMP)
	VBOOK_LAB_TESTS=1 $(VENV)/bin/pytest -q tests/test_jupyterlab_live.py -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check vbook tests tools

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
