# Kvant — the two commands a new user needs:
#   make demo   set up, build, start kvantd on the default model and show the main job
#   make test   the whole test suite (unit, in-process daemon, real model, systemd container)
SHELL := /bin/bash
SWIFT := scripts/swiftw
CONFIG ?= release
BIN := .build/$(CONFIG)
MODEL ?= $(CURDIR)/models/gemma-3-270m-q4_k_m.gguf
# MODEL is a GGUF path or the name of a model fetch-model.sh fetches: gemma, smollm2.
MODEL_PATH = $(if $(filter smollm2,$(MODEL)),$(CURDIR)/models/SmolLM2-135M-Instruct.Q4_1.gguf,$(if $(filter gemma gemma3,$(MODEL)),$(CURDIR)/models/gemma-3-270m-q4_k_m.gguf,$(MODEL)))
# Models `make bench-accuracy` measures, one table each.
ACCURACY_MODELS ?= gemma smollm2
THREADS ?= 2
PREFIX ?= /usr/local

.PHONY: all setup model model-smollm2 build demo test test-unit test-systemd test-cluster bench bench-accuracy fuzz soak oracles install uninstall clean

all: build

setup:
	scripts/setup.sh

model:
	scripts/fetch-model.sh

# SmolLM2-135M-Instruct (llama, 3 KV heads, ChatML): models/SmolLM2-135M-Instruct.Q4_1.gguf
model-smollm2:
	scripts/fetch-model.sh smollm2

build:
	$(SWIFT) build -c $(CONFIG)

# make demo MODEL=smollm2: the same on SmolLM2-135M-Instruct (3 KV heads, ChatML chat).
demo: setup build
	KVANT_MODEL=$(MODEL_PATH) scripts/demo.sh

# Every tier; each says when it is skipped and why.
test: setup
	scripts/test.sh

test-unit:
	$(SWIFT) test -c $(CONFIG)

test-systemd: build
	KVANT_MODEL=$(MODEL_PATH) scripts/systemd-test.sh

# HAProxy (deploy/haproxy/haproxy.cfg) in front of 3 kvantd on the real model: 8 streaming clients
# through a rolling restart and a SIGKILL; sent/completed/failed per phase; X-Session-Id affinity.
test-cluster: build
	python3 scripts/test_cluster.py --kvantd $(BIN)/kvantd --model $(MODEL_PATH)

# libFuzzer harnesses of every parser of untrusted input, FUZZ_SECONDS (default 60) each; see fuzz/README.md.
fuzz:
	scripts/fuzz.sh

# kvantd under concurrent socket (and HTTP) clients, reload storms, dtype switches, disconnects, then
# SIGTERM: sent / completed / errored / lost, peak RSS, blocks in use (SOAK_SECONDS, default 120).
soak: setup build
	python3 scripts/soak.py

# Speed side by side with llama.cpp's own binaries (llama-bench, llama-batched-bench; built once by
# scripts/llama-cpp.sh), same model, same threads, interleaved runs, medians, ratios.
bench: setup build
	scripts/bench.sh

# Perplexity of every kv_cache_dtype on GPL-3, ctx 512 and 2048, for each of ACCURACY_MODELS.
bench-accuracy: setup build
	for m in $(ACCURACY_MODELS); do MODEL=$$m scripts/bench-accuracy.sh || exit 1; done

# Installs llama-cpp-python (builds llama.cpp, ~10 min) for regenerating goldens and benchmarks.
oracles:
	scripts/install-oracles.sh

install: build
	scripts/install.sh "$(PREFIX)"

uninstall:
	scripts/install.sh --uninstall "$(PREFIX)"

clean:
	rm -rf .build .build-fuzz
