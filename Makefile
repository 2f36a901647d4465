# Tollgate: `make run` starts the portal, `make test` runs the whole suite. Needs only Python 3.10+ and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install run test test-fast test-tigerbeetle lint lint-imports typecheck pytest bench bench-ingest bench-ledger bench-rollup bench-scale bench-gateway bench-sdk drills clean

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	touch $@

install: $(VENV)/.installed

## run: migrate, seed the demo, then serve web (uvicorn, portal.asgi) + Celery worker + beat on http://127.0.0.1:$(PORT);
## a code change restarts them (RUN_ARGS=--noreload: not); Ctrl-C stops all
run: install
	$(PY) manage.py migrate --noinput -v0
	exec env DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) -m portal.devserver --port $(PORT) $(RUN_ARGS)

## test: lint, type-check, then the whole pytest suite (PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set),
## with a coverage report (files not fully covered, and the total)
test: install lint typecheck pytest

## lint: ruff (style, and no function over 60 statements), the architecture's import rules, no file over 500 lines
lint: install lint-imports
	$(VENV)/bin/ruff check .
	$(PY) .ci/check_sizes.py

## lint-imports: the layers and forbidden imports (import-linter, pyproject.toml) and no import cycle (docs/architecture.md)
lint-imports: install
	$(VENV)/bin/lint-imports
	$(PY) .ci/check_cycles.py

## typecheck: mypy over the project (the client SDK included), then the SDK alone with --strict (its own config)
typecheck: install
	$(VENV)/bin/mypy .
	cd clients/python && $(abspath $(VENV))/bin/mypy

pytest: install
	$(VENV)/bin/pytest --cov --cov-report=term $(PYTEST_ARGS)

## test-fast: lint, type-check and the suite without the slow (real processes) and browser tests
test-fast: install lint typecheck
	$(VENV)/bin/pytest -m "not slow and not browser" $(PYTEST_ARGS)

## test-tigerbeetle: the tests marked `ledger` again on a running TigerBeetle replica (TIGERBEETLE_ADDRESSES=127.0.0.1:3000 make test-tigerbeetle);
## the slow `make run` ones start their own replica and run in `make test`
test-tigerbeetle: install
	@test -n "$$TIGERBEETLE_ADDRESSES" || { echo "test-tigerbeetle: set TIGERBEETLE_ADDRESSES to a running replica (127.0.0.1:3000)" >&2; exit 2; }
	LEDGER_BACKEND=tigerbeetle $(VENV)/bin/pytest -m "ledger and not slow" $(PYTEST_ARGS)

## bench-ingest: real HTTP server on a throwaway PostgreSQL, 1,000,000 events; figures in docs/performance.md
bench-ingest: install
	$(PY) bench/ingest.py $(BENCH_ARGS)

## bench-ledger: plain vs quota/spend-cap-checked batch ingest in one run (5 alternating rounds, medians), and reserve+settle round trips
bench-ledger: install
	$(PY) bench/ingest.py --mode ledger $(BENCH_ARGS)

## bench-rollup: 10,000,000 events for 1,000 customers over a month: full rollup vs a plain GROUP BY, an hourly
## incremental run, and invoice drafts from rollups for every customer (BENCH_ARGS="--events 200000" for a quick run)
bench-rollup: install
	$(PY) bench/rollup.py $(BENCH_ARGS)

## bench-scale: the growth curve: rollup, invoice drafts and usage queries at 1M, 10M and 30M raw events
## (monthly partitions; figures in docs/scaling.md; about an hour and 15 GB; BENCH_ARGS="--sizes 100000,300000" for a quick run)
bench-scale: install
	nice -n 10 $(PY) bench/scale.py $(BENCH_ARGS)

## bench-gateway: the LLM gateway's added latency, 16 clients, against the same client calling a fake upstream directly
bench-gateway: install
	$(PY) bench/gateway.py $(BENCH_ARGS)

## bench-sdk: track()'s cost on the caller's thread, and the SDK emitter's events/s against one plain client
bench-sdk: install
	$(PY) bench/sdk.py $(BENCH_ARGS)

bench: bench-ingest bench-ledger bench-rollup bench-gateway bench-sdk

## drills: Tollgate under faults, one table of events sent, stored, lost, double-counted, 5xx and recovery time; fails
## unless 0 lost, 0 double-counted, 0 5xx. The ledger on a three-replica TigerBeetle cluster (replicas, then the whole
## cluster killed, app workers killed); then gunicorn + Celery worker + beat on a PostgreSQL and Redis of their own:
## web workers SIGKILLed during ingest, PostgreSQL restarted, Redis stopped 20 s, the worker SIGKILLed mid-rollup and
## mid-finalization, 100 concurrent debits on one credit (DRILL_ARGS="--schedule quick" for CI's selection,
## DRILL_ARGS="--drills redis,worker" for some); figures in docs/reliability.md
drills: install
	$(PY) bench/drills.py $(DRILL_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
