# Set-up and entry points. Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit lint bench clean

# The CPU build of torch goes in first (a local wheel here); the project's torch range accepts it and CUDA builds.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[platform,dev,cluster]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/promptseg --resolution 128 demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

# The fast unit tests alone: no Ray, Prefect, MLflow or HTTP, and none of the slow learning tests.
test-unit: install
	$(BIN)/pytest tests/unit -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/bench_store_read.py
	$(BIN)/python bench/bench_preprocess.py
	$(BIN)/python bench/bench_endpoint_latency.py
	$(BIN)/python bench/bench_model_cost.py
	$(BIN)/python bench/bench_query_latency.py
	$(BIN)/python bench/bench_gpu.py

clean:
	rm -rf $(VENV) .promptseg
