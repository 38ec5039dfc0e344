# Two set-up commands: `make demo` (full pipeline on the embedded demo task) and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build that this
# project's CI machines carry; on a GPU machine set TORCH_SPEC to the build you want, e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/demo
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/rlhf: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/rlhf
	$(BIN)/rlhf run configs/demo.yaml --run-dir $(RUN_DIR)

test: $(BIN)/rlhf
	$(BIN)/python -m pytest

lint: $(BIN)/rlhf
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
