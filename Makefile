# Two commands: `make run` (the main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Tests and demos stay on this machine and get their own DDS domain per test process.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: run demo test lint bench clean-venv

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job: the closed-loop MuJoCo demo (record -> sleep training -> SAGE nodes on held-out targets).
run: $(STAMP)
	$(PY) -m sage_hl_ros.cli demo

demo: run

test: $(STAMP)
	$(VENV)/bin/ruff check sage_hl_ros test bench launch setup.py
	$(PY) -m pytest -q test

lint: $(STAMP)
	$(VENV)/bin/ruff check sage_hl_ros test bench launch setup.py

bench: $(STAMP)
	$(PY) bench/bench_core.py

clean-venv:
	rm -rf $(VENV)
