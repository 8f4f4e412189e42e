# The whole set-up on a fresh machine is `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# A CUDA GPU is present when nvidia-smi lists one; otherwise take the CPU build of torch that
# lies on disk (an unpinned torch would pull a multi-GB CUDA build).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_CPU := torch==2.13.0
# pytest-xdist workers for `make test`; 0 runs the tests one after another in one process. On the
# 2-core reference VM three workers took 26.5 minutes of pytest, no faster than serially, and the
# elastic node-loss test then timed out waiting for Ray Train to notice the lost node, so the
# default stays serial (docs/testing.md). On a machine with more cores: make test TEST_WORKERS=4
TEST_WORKERS ?= 0

.PHONY: install demo test lint bench clean reference-env

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(HAS_GPU)" = "0" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing the CPU build of torch ($(TORCH_CPU))"; \
		$(PIP) install -q $(TORCH_CPU); fi
	$(PIP) install -q -e '.[test,dev]'
# OpenAI's BPE vocabulary and the reference tokenizer; --no-deps: open_clip's own dependencies
# (torchvision, timm) would replace the CPU torch and are not needed.
	$(PIP) install -q --no-deps open_clip_torch==3.3.0
	@bash scripts/install-system-deps.sh
	@touch $(STAMP)

DEMO_DATA := data/demo

# The data is made once; data made by an older clipray (its classes.json lists no per-class
# attributes) is made again, since the shapes and captions changed with them.
demo: install
	@grep -qs '"attributes"' $(DEMO_DATA)/eval/classes.json || $(VENV)/bin/clipray synth --out $(DEMO_DATA) --rows 16000 --shards 8 --seed 0 --bad-rows 12
	$(VENV)/bin/clipray train pipelines/demo.yaml

# reference-env: open_clip in .refenv/, which the open_clip export round trip runs (CI=1 fails without it)
test: install reference-env
	$(VENV)/bin/ruff check clipray tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --durations=30

lint: install
	$(VENV)/bin/ruff check clipray tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) clipray_runs mlruns.db mlartifacts data/demo

# open_clip 3.3.0 with its own trainer, in an environment of its own (see scripts/reference-env.sh)
reference-env:
	@bash scripts/reference-env.sh .refenv
