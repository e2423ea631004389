# serl_stack: every target creates .venv itself on a fresh machine.
#   make demo   - install and run sim training on the embedded default (learner + actor over ZeroMQ, MuJoCo)
#   make test   - install and run the whole test suite (ruff + pytest, slow tests included)
#   make test-fast / lint / bench / clean
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/serl train --config configs/sim_reach.yaml

test: $(STAMP) lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -x

lint: $(STAMP)
	$(BIN)/ruff check .

# The peers the benchmarks compare against (SBX, Stable-Baselines3, torch) are only needed here.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@ls benchmarks/*.py >/dev/null 2>&1 && for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done \
		|| echo "no benchmarks yet"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
