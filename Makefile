# The README's commands. `make demo` and `make test` each do all setup on a fresh machine.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build on CPU boxes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/peel demo --output-dir $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/step_bench.py --quick --output runs/bench_quick.json
