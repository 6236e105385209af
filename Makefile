# Entry points: `make demo` (sample catalog through every stage, then the service), `make check` (lint, the
# import contracts and the fast tests) and `make test` (the same with every test: what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/demo
ENCODER ?= autoencoder
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: demo serve check test lint venv clean

# The project in editable mode with the pipeline's, the tests' and Spark's extras: nothing needs sys.path edits.
$(VENV)/.installed: pyproject.toml requirements.txt requirements-pipeline.txt requirements-dev.txt requirements-spark.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[pipeline,dev,spark]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/make_sample_catalog.py --out data/sample-catalog
	$(PY) -m pipeline run --source fashion:data/sample-catalog --data-dir $(DATA) --encoder $(ENCODER) --eval-split 0.1
	@echo "Serving the demo index at http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	ARTIFACTS=$(DATA)/index/current GUNICORN_BIND=$(HOST):$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py application:application

# Tests run on two pytest-xdist workers, a module per worker (`--dist loadscope`: a module's fixtures are built
# once), in the order tests/conftest.py gives: the two quality modules first. Training a backbone keeps about 1.3
# of 2 cores busy, so the other modules run beside them (docs/testing.md, "Where the time goes").
# PYTEST_WORKERS=0 runs every test in this process, one after another.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The fast loop: everything but the full quality runs on the real catalog (marked slow).
check: lint
	$(PYTEST) -m "not slow" tests

test: lint
	$(PYTEST) tests

serve: venv
	ARTIFACTS=$(DATA)/index/current GUNICORN_BIND=$(HOST):$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py application:application

# ruff (rules in ruff.toml) and import-linter (the layering contracts in pyproject.toml). The link test runs
# with the tests (tests/test_docs.py).
lint: venv
	$(PY) -m ruff check runtime pipeline service benchmarks scripts tests application.py gunicorn.conf.py
	$(VENV)/bin/lint-imports

clean:
	rm -rf data/demo data/sample-catalog
