# featsurv: `make demo` runs the main job on the embedded default; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies on this machine's disk; pinning it here avoids a multi-GB CUDA
# download. Bring your own torch by installing it into .venv first (or `make TORCH= ...`).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.featsurv-installed

.PHONY: demo test install clean artefacts

$(STAMP): pyproject.toml plugins/featsurv-torchao/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if [ -n "$(TORCH)" ] && ! $(PY) -c "import torch" 2>/dev/null; then $(PIP) install -q "$(TORCH)"; fi
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q -e ./plugins/featsurv-torchao
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/featsurv compare rtn pruning --predict --out featsurv-runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests plugins/featsurv-torchao/tests

# Rebuild the embedded corpus, model and SAEs (minutes; see docs/training.md).
artefacts: $(STAMP)
	$(PY) scripts/build_corpus.py
	$(PY) scripts/train_model.py
	$(PY) scripts/train_saes.py

clean:
	rm -rf $(VENV) build *.egg-info featsurv-runs
