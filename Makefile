# Development tasks. Every target builds the virtual environment it needs from nothing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/camvid
STAMP := $(VENV)/.installed
# ROS 2 Jazzy wheels in a venv of their own, for the Fast DDS profile test on Fast DDS 2.x.
VENV_JAZZY ?= .venv-jazzy
JAZZY_STAMP := $(VENV_JAZZY)/.installed
# Wheels of the real ROS 2 launch / ros2cli tools; the tests that need them skip without them.
ROS2_TOOLS ?= ../shared/ros2-tools
ROS2_TOOLS_WHEELS := $(wildcard $(ROS2_TOOLS)/*.whl)

.PHONY: venv venv-jazzy test test-fast lint demo bench clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt requirements-ros2-tools.txt setup.py training/setup.py \
		$(ROS2_TOOLS_WHEELS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
ifneq ($(ROS2_TOOLS_WHEELS),)
	$(BIN)/pip install --quiet --no-deps $(ROS2_TOOLS_WHEELS)
	$(BIN)/pip install --quiet -r requirements-ros2-tools.txt
endif
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . -e training
	touch $(STAMP)

venv-jazzy: $(JAZZY_STAMP)

$(JAZZY_STAMP): requirements-jazzy.txt
	$(PYTHON) -m venv $(VENV_JAZZY)
	$(VENV_JAZZY)/bin/pip install --quiet -r requirements-jazzy.txt
	touch $(JAZZY_STAMP)

# Everything; what CI runs (.ci/run).
test: venv venv-jazzy
	$(BIN)/python -m pytest -q test training/test

# In about a minute: no test that starts a process (integration: nodes, ros2 CLI, launch, bag
# tools as subprocesses, torchrun) and none that takes long on the CPU (slow).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not integration and not slow" test training/test

lint: venv
	$(BIN)/python -m pytest -q test/test_flake8.py test/test_pep257.py

demo: venv
	$(BIN)/python scripts/demo.py --data $(DATA) --out demo_output

bench: venv
	$(BIN)/python bench/bench_segmenter.py --sizes 480x360,1280x720 --frames 100 --json bench_segmenter.json

clean:
	rm -rf $(VENV) $(VENV_JAZZY) demo_output .pytest_cache
