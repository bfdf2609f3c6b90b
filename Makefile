# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean test-blender-matrix

install: $(STAMP)

$(STAMP): backend/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0 bpy==5.0.1
	$(PY) -m pip install -e 'backend[test,ray]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs tests

demo: $(STAMP)
	$(PY) -m safemotion.demo --out out/demo

clean:
	rm -rf $(VENV) out .pytest_cache

.PHONY: dist
dist: $(STAMP)
	$(PY) packaging/build_extension.py --out dist
	$(PY) -m pip wheel --no-deps -w dist ./backend

# The add-on's tests on the other Blender versions it supports (5.0 runs in .venv): one venv per bpy wheel.
BPY_42 := 4.2.23
BPY_45 := 4.5.15
ADDON_TESTS := tests/test_addon_*.py tests/test_blender_anim.py tests/test_retarget_math.py tests/test_retarget_acceptance.py \
	tests/test_packaging.py

.venv-bpy%/.installed: backend/pyproject.toml Makefile
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install --upgrade pip
	$(@D)/bin/python -m pip install torch==2.13.0 bpy==$(BPY_$*) "numpy<2" requests pytest
	$(@D)/bin/python -m pip install -e 'backend[test]' "numpy<2"
	touch $@

test-blender-matrix: .venv-bpy42/.installed .venv-bpy45/.installed
	status=0; for v in 42 45; do \
		echo "== bpy $$(.venv-bpy$$v/bin/python -c 'import bpy; print(bpy.app.version_string)')"; \
		.venv-bpy$$v/bin/python -m pytest -q $(ADDON_TESTS) || status=1; \
	done; exit $$status
