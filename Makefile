# Two entry points: `make demo` (sample catalog through every stage) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/demo
ENCODER ?= autoencoder

.PHONY: demo test lint venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/make_sample_catalog.py --out data/sample-catalog
	$(PY) -m pipeline run --source fashion:data/sample-catalog --data-dir $(DATA) --encoder $(ENCODER) --eval-split 0.1

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check pipeline service scripts tests

clean:
	rm -rf data/demo data/sample-catalog
