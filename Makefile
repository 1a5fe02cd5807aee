# One-command set-up on a fresh machine: `make serve` runs the gateway on the
# embedded default backend (./s3latent-data); `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench-gateway clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/s3latent serve $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check s3latent tests compat_tests
	$(BIN)/python -m pytest -q -ra --durations=30 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check s3latent tests compat_tests
	$(BIN)/ruff format --check s3latent tests compat_tests

clean:
	rm -rf $(VENV)
