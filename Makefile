# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): backend/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0 bpy==5.0.1
	$(PY) -m pip install -e 'backend[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m safemotion.demo --out out/demo

clean:
	rm -rf $(VENV) out .pytest_cache

.PHONY: dist
dist: $(STAMP)
	$(PY) packaging/build_extension.py --out dist
	$(PY) -m pip wheel --no-deps -w dist ./backend
