# The two commands a newcomer needs:
#   make reproduce   set up the locked environment and run the whole pipeline (dvc repro)
#   make test        set up the locked environment and run every test (pytest + nbval)
# and `make lab` to open the notebooks in JupyterLab with the project's kernel.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
# uv from PATH, else a private copy bootstrapped with the system Python.
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --locked

# Where the public MNIST mirrors are unreachable, a local mirror beside the
# checkout is used when present (see README, "Data").
SHARED_MNIST := $(abspath $(CURDIR)/../shared/data/mnist)
ifeq ($(MNIST_MIRROR),)
ifneq ($(wildcard $(SHARED_MNIST)/SHA256SUMS),)
export MNIST_MIRROR := $(SHARED_MNIST)
endif
endif

# Fashion-MNIST (notebook 05) likewise: a mirror named by FASHION_MNIST_MIRROR, else
# the folder of Debian's package dataset-fashion-mnist when it is installed.
DEBIAN_FASHION_MNIST := /usr/share/datasets/fashion-mnist
ifeq ($(FASHION_MNIST_MIRROR),)
ifneq ($(wildcard $(DEBIAN_FASHION_MNIST)/train-images-idx3-ubyte.gz),)
export FASHION_MNIST_MIRROR := $(DEBIAN_FASHION_MNIST)
endif
endif

.PHONY: help setup reproduce test lab bench lock notebooks-refresh fashion-mnist-mirror

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: each new process (a notebook's kernel, a training worker) then
# imports torch without compiling its sources again, even where PYTHONDONTWRITEBYTECODE is set.
.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --locked --compile-bytecode
	@touch $@

setup: .venv/.synced  ## create .venv from uv.lock (exact versions)

reproduce: setup  ## run the whole pipeline: dvc repro (reports/ is regenerated)
	$(RUN) dvc repro

test: setup  ## run every test: unit, integration and nbval on the notebooks' smoke defaults
	OMP_NUM_THREADS=1 $(RUN) pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
		--numprocesses=auto --dist=loadfile --durations=15

lab: setup  ## open the notebooks in JupyterLab with the project's environment
	$(RUN) jupyter lab notebooks/

bench: setup  ## speed against the compute floor: training (vs the tutorial loop, scikit-learn), frozen-base features, CNN training, heads on cached features, where notebooks 06 and 07 spend it
	$(RUN) python benchmarks/bench_training.py
	$(RUN) python benchmarks/bench_features.py
	$(RUN) python benchmarks/bench_cnn.py
	$(RUN) python benchmarks/bench_heads.py
	$(RUN) python benchmarks/study_profile.py

fashion-mnist-mirror:  ## offline Debian/Ubuntu: install Fashion-MNIST from the package dataset-fashion-mnist
	tools/install_fashion_mnist_mirror.sh

lock:  ## after editing dependencies: update uv.lock and the pip lock conda users install
	$(UV) lock
	$(UV) export --frozen --no-hashes --no-emit-project --output-file requirements-lock.txt >/dev/null

notebooks-refresh: setup  ## re-run notebooks with smoke defaults; keep only NBVAL_CHECK_OUTPUT outputs
	$(RUN) python tools/refresh_notebook_outputs.py notebooks/*.ipynb
