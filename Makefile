# The two commands of the README: `make demo` and `make test`. Both create/refresh .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
WORK    ?= work
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast lint bench clean

# torch first and pinned: an unpinned resolve pulls the multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llada demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/handoff_memory.py
	$(BIN)/python bench/attention_step.py
	$(BIN)/python bench/orchestration.py
	if [ -d $(WORK)/store ]; then $(BIN)/python bench/e2e.py && $(BIN)/python bench/decoding.py; \
	else echo "bench/e2e.py and bench/decoding.py read a finished run: make demo first"; fi

clean:
	rm -rf $(WORK) .pytest_cache
