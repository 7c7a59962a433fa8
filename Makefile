# churn-platform: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen

.PHONY: help install demo test scenario check lint typecheck up down status bench bento clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

uv-bootstrap:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv  # a distribution's own Python (PEP 668)

install: uv-bootstrap  ## create .venv from uv.lock
	$(UV) sync --frozen

# The demo ends with a short closed-loop scenario: a week of the platform's days on the world, which drifts from the
# second; it prints the story (drift share and ROC AUC per version and day, the retraining decisions, the A/B
# verdicts, and the Prefect runs, MLflow versions and Evidently reports behind them).
demo: install  ## start the embedded stack, generate the default world, serve its features, train, predict, simulate
	$(RUN) churn up
	$(RUN) churn generate --replace
	$(RUN) churn features compute
	$(RUN) churn features apply
	$(RUN) churn features materialize
	$(RUN) churn features show
	$(RUN) churn train
	$(RUN) churn predict
	$(RUN) churn simulate --days 7 --drift-at 2
	$(RUN) churn status

# Test files run in TEST_WORKERS processes (pytest-xdist), each file whole in one of them: a module's served world
# is built once, and each process has its own embedded servers and Prefect test server.
TEST_WORKERS ?= 2

test: install  ## run the tests against real PostgreSQL and Redis
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

scenario: install  ## the closed loop end to end on real servers, drift to promotion (about 25 minutes)
	$(RUN) pytest -m scenario tests/integration/test_closed_loop.py

lint: install
	$(RUN) ruff check src tests flows bench bentos feature_repo .ci
	$(RUN) ruff format --check src tests flows bench bentos feature_repo .ci

typecheck: install
	$(RUN) mypy

check: lint typecheck test  ## ruff, mypy and the tests

up: install  ## start the local stack
	$(RUN) churn up

down: install  ## stop the local stack
	$(RUN) churn down

status: install  ## show the local stack
	$(RUN) churn status

bench: install  ## run every benchmark the README quotes (about an hour and a half on 2 cores)
	$(RUN) python -m bench.generate
	$(RUN) python -m bench.ingest
	$(RUN) python -m bench.features
	$(RUN) python -m bench.train
	$(RUN) python -m bench.serving

bento: install  ## build the prediction service as a Bento (the platform's wheel first, into dist/)
	$(UV) build --wheel
	$(RUN) bentoml build bentos/churn_service

clean:  ## stop the stack and delete its data
	-$(RUN) churn down
	rm -rf "$${CHURN_DATA_DIR:-.churn}"
