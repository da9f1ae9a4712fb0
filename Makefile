# Development tasks. Every target builds the virtual environment it needs from nothing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/camvid
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint demo bench clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt setup.py training/setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . -e training
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q test training/test

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" test training/test

lint: venv
	$(BIN)/python -m pytest -q test/test_flake8.py test/test_pep257.py

demo: venv
	$(BIN)/python -m enet_ros.ros.demo --data $(DATA) --out demo_output

bench: venv
	$(BIN)/python bench/bench_segmenter.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
