# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.installed-llama
LLAMA_SOURCE := $(VENV)/llama.cpp
# the llama extra's pin (pyproject.toml), so the converter is the same llama.cpp as the binding
LLAMA_CPP_PYTHON := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)

.PHONY: setup run demo test test-fast lint typecheck package-copy evaluate collect bench-service clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch first: an unpinned torch would pull gigabytes of CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the llama.cpp engine: one build of the llama.cpp tree that the pinned llama-cpp-python sdist vendors gives
# both llama-cpp-python's libraries and the C++ llama-server (continuous batching), so the in-process
# references run the server's own kernels.  Without -march=native (gcc-12's native build crashes in the AMX
# path on quantised models).  The binding itself is installed from the same sdist without building
# libraries (LLAMA_BUILD=OFF), and the tree's libraries and llama-server go into its lib/ ($ORIGIN rpath).
LLAMA_SDIST := $(VENV)/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLAMA_BUILD := $(VENV)/llama.cpp-build
LLAMA_CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON \
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF
$(LLAMA_STAMP): $(STAMP)
	rm -rf $(VENV)/sdist $(LLAMA_SOURCE) $(LLAMA_BUILD) && mkdir -p $(VENV)/sdist $(LLAMA_SOURCE)
	$(PY) -m pip download --quiet --no-deps --no-binary :all: -d $(VENV)/sdist llama-cpp-python==$(LLAMA_CPP_PYTHON)
	tar -xzf $(LLAMA_SDIST).tar.gz -C $(VENV)/sdist
	$(PY) -m pip install --quiet cmake ninja  # wheels: no system build tools beyond a C++ compiler
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH cmake -S $(LLAMA_SDIST)/vendor/llama.cpp -B $(LLAMA_BUILD) $(LLAMA_CMAKE_FLAGS) >/dev/null
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH cmake --build $(LLAMA_BUILD) --target llama-server
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install --quiet --no-deps --no-cache-dir \
	  $(LLAMA_SDIST).tar.gz
	$(PY) -m pip install --quiet -e '.[dev,llama]'
	LIB=$$($(PY) -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib")') \
	  && mkdir -p $$LIB && cp -P $(LLAMA_BUILD)/bin/*.so* $(LLAMA_BUILD)/bin/llama-server $$LIB/
	# llama.cpp's HF -> GGUF converter (`hspi model add --convert-gguf`) is not in the wheel: from the same tree
	cp -r $(addprefix $(LLAMA_SDIST)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py LICENSE) $(LLAMA_SOURCE)/
	rm -rf $(VENV)/sdist $(LLAMA_BUILD)
	touch $(LLAMA_STAMP)

setup: $(STAMP) $(LLAMA_STAMP)

# the audit service on 127.0.0.1:8000 (SQLite and keys under .hspi/), the shipped classifier and a
# demo target on loopback; prints a curl line that audits it; Ctrl-C stops
run: $(STAMP)
	mkdir -p .hspi && chmod 700 .hspi
	HSPI_SECRET_KEY_FILE=.hspi/secret.key HSPI_BOOTSTRAP_KEY_FILE=.hspi/admin.key \
	  $(VENV)/bin/hspi serve --database sqlite:///.hspi/hspi.db --host 127.0.0.1 --port 8000 --demo

# the previous `make run`: a random platform of the grid in a fresh process, identified from 4 answers
demo: $(STAMP)
	$(VENV)/bin/hspi demo --tier topk20 --queries 4

# the audit service under load and faults (loopback only): benchmarks/results/service-load.{json,png}
bench-service: $(STAMP)
	$(PY) benchmarks/service_load.py --out benchmarks/results/

# the whole suite, slow integration tests included, after the linters (what CI runs)
test: $(LLAMA_STAMP) lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider --timeout 1200

# the inner loop: unit tests only (no subprocess collections, servers or llama.cpp)
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" --timeout 300 -x

# The stage folders sit at the top level but import as hspi.* (a package-dir mapping); import-linter
# and mypy read packages from disk, so they read a copy laid out as installed (hspi/audit <- audit/, ...)
PACKAGE_COPY := build/package
package-copy:
	rm -rf $(PACKAGE_COPY) && mkdir -p $(PACKAGE_COPY)/hspi
	cp hspi/*.py $(PACKAGE_COPY)/hspi/ && cp -r hspi/cli $(PACKAGE_COPY)/hspi/cli
	for d in audit collector features classifier api; do cp -r $$d $(PACKAGE_COPY)/hspi/$$d; done
	find $(PACKAGE_COPY) -name __pycache__ -prune -exec rm -rf {} +

# ruff (lint and format) and the import contract: stages import one way (pyproject.toml)
lint: $(STAMP) package-copy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd $(PACKAGE_COPY) && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports $(CURDIR)/pyproject.toml

typecheck: $(STAMP) package-copy
	cd $(PACKAGE_COPY) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p hspi

evaluate: $(STAMP)
	$(VENV)/bin/hspi evaluate --dataset datasets/cpu-amd-epyc --json benchmarks/results/cpu-amd-epyc.json --plots benchmarks/results/

collect: $(STAMP)
	$(VENV)/bin/hspi collect --grid cpu-default --models all --out datasets/cpu-amd-epyc

clean:
	rm -rf $(VENV)
