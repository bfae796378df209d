# Two entry points for a fresh machine; each creates .venv on first use.
#   make run    - the main job: the default scenario (on a machine without a GPU: correctness under the Triton
#                 interpreter; the summary says what was skipped)
#   make test   - the project's own tests (CPU: Triton interpreter; GPU: also the large-shape and CUDA-graph tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A torch the system already has (a CUDA build on a GPU box) is kept; else the CPU build of 2.13.0.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[plot]"
	touch $@

.PHONY: run test
run: $(BIN)/.installed
	$(BIN)/python -m pytest --moeperf scenarios/mixtral.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto -q
