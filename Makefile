# Two entry points for a fresh machine; each creates .venv on first use.
#   make test   - the project's own tests (CPU: Triton interpreter; GPU: also the large-shape and CUDA-graph tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build from local disk where one is offered; on a GPU box an installed CUDA torch is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $@

.PHONY: test
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -q
