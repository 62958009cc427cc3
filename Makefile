# Two entry points for a fresh machine without ROS (see README):
#   make demo   -> .venv with everything, then `lifelong-ros demo`
#   make test   -> .venv with everything, then the whole test suite
#   make lint   -> ruff (lint + format check) and mypy, as CI runs them
# torch==2.13.0 (CPU wheel) is installed first so nothing later can pull a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEMO_ARGS ?=

.PHONY: install demo test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test,lint]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lifelong-ros demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest test -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) *.egg-info
