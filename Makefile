# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test evaluate collect clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch first: an unpinned torch would pull gigabytes of CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hspi demo --tier topk20 --queries 4

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout 1200

evaluate: $(STAMP)
	$(VENV)/bin/hspi evaluate --dataset datasets/cpu-amd-epyc --json benchmarks/results/cpu-amd-epyc.json --plots benchmarks/results/

collect: $(STAMP)
	$(VENV)/bin/hspi collect --grid cpu-default --models all --out datasets/cpu-amd-epyc

clean:
	rm -rf $(VENV)
