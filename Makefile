# Set-up and everyday commands. `make run` and `make test` work on a fresh machine:
# they create .venv and install everything, including the embedded local model.
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp's default native build uses AMX kernels that crash on some x86 VMs;
# OpenMP slows concurrent requests. See README "Embedded model".
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF
TASK ?= What are two advantages of using version control such as git?

.PHONY: install run test lint bench langgraph-suite mutate
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[local,dev]'
	touch $@

run: install
	$(VENV)/bin/moa run "$(TASK)"

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider

# LangGraph's own tests on our four savers and the official ones (tests/langgraph_suite/)
langgraph-suite: install
	$(PY) tests/langgraph_suite/run.py --failures .cache/langgraph-suite/failures.txt
	$(PY) tests/langgraph_suite/run_stores.py  # the official SQLite store's tests on our store

# Mutation score per package (bench/mutation.py; scratch copies under /tmp/moa-mutate).
# TARGETS: any of nodes saver executor auth (default: all). Takes long: run it alone.
TARGETS ?=
mutate: install
	$(PY) bench/mutation.py $(TARGETS) --children 2

lint: install
	$(VENV)/bin/ruff check langgraph_moa tests bench examples
	$(VENV)/bin/ruff format --check langgraph_moa tests bench examples
	$(VENV)/bin/mypy langgraph_moa
	$(VENV)/bin/lint-imports  # the import floors in pyproject.toml [tool.importlinter]
