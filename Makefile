# Kvant — the two commands a new user needs:
#   make demo   set up, build, start kvantd on the default model and show the main job
#   make test   the whole test suite (unit, in-process daemon, real model, systemd container)
SHELL := /bin/bash
SWIFT := scripts/swiftw
CONFIG ?= release
BIN := .build/$(CONFIG)
MODEL ?= $(CURDIR)/models/gemma-3-270m-q4_k_m.gguf
THREADS ?= 2
PREFIX ?= /usr/local

.PHONY: all setup model build demo test test-unit test-systemd bench bench-accuracy oracles install uninstall clean

all: build

setup:
	scripts/setup.sh

model:
	scripts/fetch-model.sh

build:
	$(SWIFT) build -c $(CONFIG)

demo: setup build
	scripts/demo.sh

# Every tier; each says when it is skipped and why.
test: setup
	scripts/test.sh

test-unit:
	$(SWIFT) test -c $(CONFIG)

test-systemd: build
	KVANT_MODEL=$(MODEL) scripts/systemd-test.sh

# Speed side by side with llama.cpp's own binaries (llama-bench, llama-batched-bench; built once by
# scripts/llama-cpp.sh), same model, same threads, interleaved runs, medians, ratios.
bench: setup build
	scripts/bench.sh

# Perplexity of every kv_cache_dtype on GPL-3, ctx 512 and 2048.
bench-accuracy: setup build
	scripts/bench-accuracy.sh

# Installs llama-cpp-python (builds llama.cpp, ~10 min) for regenerating goldens and benchmarks.
oracles:
	scripts/install-oracles.sh

install: build
	scripts/install.sh "$(PREFIX)"

uninstall:
	scripts/install.sh --uninstall "$(PREFIX)"

clean:
	rm -rf .build
