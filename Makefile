# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
# Each does its own set-up on a fresh machine: a virtualenv, the install, the default model.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel that lies on these machines' disk; an unpinned torch pulls CUDA.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,local

# The docker backend's integration tests want a real container engine. Where we are root on a
# Debian host (CI), `make test` sets up podman's Docker API and the sandbox image
# (deploy/podman-ci.sh, ~4 min the first time) and requires the tests to run; elsewhere they run
# against whatever engine DOCKER_HOST or the usual sockets name, and skip, saying why, without one.
# `make test ENGINE=` opts out.
ENGINE ?= $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo podman)
ENGINE_ENV := $(if $(ENGINE),MATHCODER_TEST_DOCKER=require DOCKER_HOST=unix:///run/podman/podman.sock)

.PHONY: demo test test-quick lint setup model engine browser llama-server adapter clean

$(VENV)/.installed: pyproject.toml
	@# The sandbox isolates kernels with bubblewrap (setpriv comes with util-linux).
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null); } || \
	  echo "warning: bubblewrap is missing; install it or set MATHCODER_SANDBOX_ISOLATION=none (never for untrusted code)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

# The install, and the native CPU engine the default backend runs on (see llama-server below).
setup: $(VENV)/.installed $(BIN)/llama-server

model: setup
	$(BIN)/mathcoder model fetch

# Not in GSM8K (train or test) nor in any training set here: the demo shows the model working, not remembering.
QUESTION ?= A bakery packs muffins in boxes of 6. Priya buys 7 boxes and gives 15 muffins to her neighbours. How many muffins does she have left?

# llama.cpp's server, built from the llama-cpp-python source package (no prebuilt binary can be
# downloaded here): about 4 minutes on 2 idle cores the first time on a machine, seconds after that
# (kept in ~/.cache/mathcoder/llama.cpp).  The default backend (auto) runs on it on a CPU; without it
# everything falls back to transformers, ~4x slower for one stream.
llama-server: $(BIN)/llama-server

$(BIN)/llama-server: deploy/build-llama-server.sh | $(VENV)/.installed
	bash deploy/build-llama-server.sh $(BIN)

# Rebuild the default adapter from nothing on this CPU: gsm8k-calc traces of the first 2,000 GSM8K
# train problems (137 s with forked kernels), LoRA training by training/recipe.py (85 steps: 83 min
# on a quiet 2-core AVX2 EPYC in fp32; bf16 where the CPU has AVX512-BF16), export.  Resumable:
# run it again after an interruption.
adapter: model
	$(BIN)/python -m training.recipe --out runs/rebuild

demo: setup model
	$(BIN)/mathcoder solve "$(QUESTION)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

engine:
	bash deploy/podman-ci.sh all

# The playground's browser tests drive Debian's chromium through chromedriver; installed where we are
# root on Debian (CI), as bubblewrap is, and required there; elsewhere those tests skip, saying why.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null); } || \
	  echo "note: chromium/chromedriver are missing; the playground's browser tests will skip"

test: lint model browser $(if $(ENGINE),engine)
	$(ENGINE_ENV) MATHCODER_TEST_LLAMACPP=require $(BIN)/pytest

test-quick: setup
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
