# Quick start: `make demo` (train the default model and draw samples) and `make test`.
# Both create .venv with python3 if it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Train the default model on the built-in shapes for its 5,000 steps (resumes
# if runs/shapes32 has checkpoints), then draw a grid: one row per prompt, four
# seeds each. The 70-minute cap is a safety: 5,000 steps fit in it at a third
# of the slowest VM measured (3.85 steps/s); a run it stops says so.
demo: $(STAMP)
	$(BIN)/python -m experiments.train --config experiments/configs/shapes32.py --workdir runs/shapes32 \
	  --config.train.max_minutes=70
	$(BIN)/python -m experiments.sample --workdir runs/shapes32 --num_per_prompt 4 \
	  --prompt "a small red circle on the left" --prompt "a large blue square at the top" \
	  --prompt "a small yellow triangle in the center" \
	  --prompt "a large green circle in the bottom right and a small white square in the top left" \
	  --out runs/shapes32/demo.png

# pytest exits 5 when it collects no test; that is a failure of the suite, not a pass.
# Much of the suite is single-threaded XLA compilation, so one worker per core.
# Its training runs in the pytest processes themselves, so they get the
# huge-page tunable that the entry points relaunch with (dallex/hugepages.py).
test: lint
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} \
	  $(BIN)/python -m pytest -q --numprocesses=auto --maxprocesses=4 --durations=20

# The code as pyink formats it, and no ruff finding (pyproject.toml has both configs).
lint: $(STAMP)
	$(BIN)/pyink --check --quiet dallex experiments tests
	$(BIN)/ruff check --quiet dallex experiments tests

format: $(STAMP)
	$(BIN)/pyink --quiet dallex experiments tests

clean:
	rm -rf $(VENV) runs .pytest_cache
