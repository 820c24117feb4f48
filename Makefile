# Every target that runs Python bootstraps .venv from requirements.lock first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# The kfp SDK's own virtualenv (protobuf >= 4.21; TFX 1.16 needs < 4.21).
KFP_VENV := .venv-kfp
KFP_STAMP := $(KFP_VENV)/.installed

CONFIG ?= configs/local.yaml
SET ?=
SET_ARGS := $(foreach kv,$(SET),--set $(kv))
# compile-kubeflow and schedule: CONFIG if given, else the cluster example.
KUBEFLOW_CONFIG = $(or $(filter-out configs/local.yaml,$(CONFIG)),configs/kubeflow.yaml)
PYTEST_ARGS ?=

ENDPOINT ?=
DRY_RUN ?=
# Container registry for `make images`, e.g. europe-docker.pkg.dev/PROJECT/ml
REGISTRY ?=
TAG ?= latest

.PHONY: run-local test test-fast durations bench bench-tuning compile-kubeflow schedule backbone kubeflow-local images lock clean venv tensorboard compare chromium
PORT ?= 6006
STRATEGIES ?= scratch,full,head,staged,probe,guide
SEEDS ?= 3

run-local: $(STAMP)
	$(PY) -m pipeline run --config $(CONFIG) $(SET_ARGS)

# TensorBoard on the latest local run's training logs (one run per stage): make tensorboard [PORT=6006]
tensorboard: $(STAMP)
	$(PY) -m pipeline tensorboard --config $(CONFIG) $(SET_ARGS) --port $(PORT)

# The same data through each fine-tuning strategy, median over seeds: make compare [STRATEGIES=...] [SEEDS=3]
compare: $(STAMP)
	$(PY) -m pipeline compare --config $(CONFIG) $(SET_ARGS) --strategies $(STRATEGIES) --seeds $(SEEDS)

compile-kubeflow: $(STAMP)
	$(PY) -m pipeline compile --config $(KUBEFLOW_CONFIG) $(SET_ARGS) --output build/kubeflow/pipeline.yaml

# Upload to Kubeflow Pipelines and create or replace the recurring run: make schedule ENDPOINT=URL [DRY_RUN=1]
schedule: $(STAMP) $(KFP_STAMP)
	$(PY) -m pipeline schedule --config $(KUBEFLOW_CONFIG) $(SET_ARGS) --endpoint $(ENDPOINT) $(if $(DRY_RUN),--dry-run)

# Build model.backbone and write it to kubeflow.backbone_uri (or SET=... a different config value).
backbone: $(STAMP)
	$(PY) -m pipeline backbone --config $(KUBEFLOW_CONFIG) $(SET_ARGS)

# The compiled Kubeflow spec of CONFIG, its steps run here one by one (tools/kfp_launcher.py).
kubeflow-local: $(STAMP)
	$(PY) -m tools.kfp_launcher --config $(CONFIG) $(SET_ARGS) --work-dir runs/kubeflow-local

# Build and push the pipeline (CPU) and trainer (GPU) images; needs Docker.
images:
	@test -n "$(REGISTRY)" || { echo 'usage: make images REGISTRY=registry/path [TAG=latest]' >&2; exit 2; }
	docker build -f docker/Dockerfile --target pipeline -t $(REGISTRY)/staged-finetune:$(TAG) .
	docker build -f docker/Dockerfile --target trainer -t $(REGISTRY)/staged-finetune-gpu:$(TAG) .
	docker push $(REGISTRY)/staged-finetune:$(TAG)
	docker push $(REGISTRY)/staged-finetune-gpu:$(TAG)

# The import layers first (pyproject.toml [tool.importlinter]), then the tests.
test: $(STAMP) $(KFP_STAMP) chromium
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick tests: no pipeline run, no training process, no full-size network, nothing of 3.5 s or more
# (markers e2e, slow).
test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m 'not e2e and not slow' $(PYTEST_ARGS)

# Each test module's seconds in the last full `make test` (pytest's cache) -> tests/durations.json,
# the order the next runs start the modules in (slowest first; conftest.py).
durations: $(STAMP)
	$(PY) -c 'import json, sys; d = json.load(open(".pytest_cache/v/staged-finetune/durations")); json.dump(d, open("tests/durations.json", "w"), indent=1, sort_keys=True); print(len(d), "modules")'

# The Trainer's path against a bare Keras fit (examples/s, `ratio`), and Transform's bytes per example.
bench: $(STAMP)
	$(PY) -m benchmarks.trainer

# What a search costs: its wall time over one training of the fixed recipe, trials and pruned ones.
bench-tuning: $(STAMP)
	$(PY) -m benchmarks.tuning --config $(CONFIG) $(SET_ARGS)

# The report test opens the run report in Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo 'installing chromium (apt-get)'; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# The locked packages are installed with their bytecode compiled: where PYTHONDONTWRITEBYTECODE is
# set, every Python process would otherwise compile each module it imports from source (TensorFlow
# alone takes over twice as long to import).
venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml scripts/find-python310.sh
	@set -e; \
	if ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then \
	  python=$$(scripts/find-python310.sh); \
	  echo "creating $(VENV) with $$python"; \
	  rm -rf $(VENV); "$$python" -m venv $(VENV); \
	fi; \
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; \
	$(PY) -m uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.lock; \
	$(PY) -m uv pip install --quiet --python $(PY) --no-deps -e .; \
	touch $@

$(KFP_STAMP): tools/kfp/requirements.lock $(STAMP)
	@set -e; \
	if [ ! -x $(KFP_VENV)/bin/python ]; then "$$(scripts/find-python310.sh)" -m venv $(KFP_VENV); fi; \
	$(PY) -m uv pip install --quiet --compile-bytecode --python $(KFP_VENV)/bin/python -r tools/kfp/requirements.lock; \
	touch $@

# Re-resolve the locks after changing dependencies in pyproject.toml or tools/kfp/requirements.in.
lock: $(STAMP)
	$(PY) -m uv pip compile pyproject.toml --extra dev --python-version 3.10 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock
	sed -i '2a # keras==3.12.4: the newest Keras for Python 3.10 with CVE-2025-1550 and the later safe_mode bypasses fixed (see pyproject.toml).' requirements.lock
	$(PY) -m uv pip compile tools/kfp/requirements.in --python-version 3.10 \
	  --python-platform x86_64-manylinux_2_28 -o tools/kfp/requirements.lock

clean:
	rm -rf runs build
