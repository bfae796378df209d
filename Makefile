# Two entry points for a fresh machine; each creates .venv on first use.
#   make run    - the main job: the default scenario (on a machine without a GPU: correctness under the Triton
#                 interpreter; the summary says what was skipped)
#   make test   - the project's own tests (CPU: Triton interpreter; GPU: also the large-shape and CUDA-graph tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	# The packages of the interpreter that made the venv stay visible in it, also where that interpreter is itself a
	# venv (GPU images often are; --system-site-packages alone then reaches only the base interpreter's packages).
	$(PYTHON) -c "import site; print(*site.getsitepackages(), sep='\n')" \
		> "$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/_moeperf_parent.pth"
	# A torch the system already has (a CUDA build on a GPU box) is kept; else the CPU build of 2.13.0.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	# Offline (no package index: PIP_NO_INDEX=1), the build falls back to the setuptools already installed.
	$(BIN)/python -m pip install -q -e ".[plot]" || $(BIN)/python -m pip install -q --no-build-isolation -e ".[plot]"
	touch $@

.PHONY: run test
run: $(BIN)/.installed
	$(BIN)/python -m pytest --moeperf scenarios/mixtral.yaml

# Tests marked gpu_alone assert absolute GPU times: they run after the parallel part, alone on the GPU (on an H200,
# 16 workers sharing it once made an injected 1 us spin measure 0.49 us).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --dist loadfile -q -m "not gpu_alone"
	$(BIN)/python -m pytest -q -m gpu_alone
