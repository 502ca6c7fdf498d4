# featsurv: `make demo` runs the main job on the embedded default; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies on this machine's disk; pinning it here avoids a multi-GB CUDA
# download. Bring your own torch by installing it into .venv first (or `make TORCH= ...`).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.featsurv-installed
# The separately packaged plugin distributions under distributions/ that install here without
# touching torch (each is `pip install -e`d and its tests run in `make test`). featsurv-gptq's
# gptqmodel==7.6.0 is built from source on install and pins numpy==2.2.6 (see docs/plugins/gptq.md).
DISTS := torchao hqq bnb gptq
DIST_DIRS := $(foreach d,$(DISTS),distributions/featsurv-$(d))

.PHONY: demo test install clean artefacts

$(STAMP): pyproject.toml $(foreach d,$(DIST_DIRS),$(d)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if [ -n "$(TORCH)" ] && ! $(PY) -c "import torch" 2>/dev/null; then $(PIP) install -q "$(TORCH)"; fi
	$(PIP) install -q -e '.[test,ray]'
	$(PIP) install -q $(foreach d,$(DIST_DIRS),-e ./$(d))
	# compressed-tensors lets the built-in `checkpoint` compressor read llm-compressor checkpoints (torch stays)
	$(PIP) install -q 'compressed-tensors~=0.20.1'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/featsurv compare rtn pruning --predict --out featsurv-runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests $(foreach d,$(DIST_DIRS),$(d)/tests)

# Rebuild the embedded corpus, model and SAEs (minutes; see docs/training.md).
artefacts: $(STAMP)
	$(PY) scripts/build_corpus.py
	$(PY) scripts/train_model.py
	$(PY) scripts/train_saes.py

clean:
	rm -rf $(VENV) build *.egg-info featsurv-runs
