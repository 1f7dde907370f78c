# Two commands from a fresh clone: `make demo` and `make test`. `make stop` ends what demo started.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TEMPORAL := $(VENV)/bin/temporal
STAMP := $(VENV)/.installed
STATE := .temporal
PORT := 7233
UI_PORT := 8233
UI := http://localhost:$(UI_PORT)

# Exit 0 when something accepts connections on localhost:$(1).
listening = $(PY) -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", $(1))) != 0)'
# Exit 0 when the pid in file $(1) is a live process (a zombie, killed but not reaped, is not).
alive = [ -f $(1) ] && ps -o stat= -p "$$(cat $(1))" 2>/dev/null | grep -qv '^Z'
# Background processes get their own session where setsid exists (not on macOS),
# so Ctrl+C in this terminal does not reach them.
DETACH := $(shell command -v setsid 2>/dev/null) nohup
WORKSPACE := $(or $(RELEASE_WORKSPACE),.)

.PHONY: help install demo demo-postgres dashboard server worker release stop stop-worker kill-worker test chaos faults mutation histories bench screenshots lint clean-workspace

help:
	@echo "make demo    install, start a dev server and a worker, run the INITIAL release"
	@echo "make test    install and run the whole test suite"
	@echo "make stop    stop the worker and dev server that make started"
	@echo "make chaos   kill workers and restart the server during a release; print the figures"
	@echo "make faults  plant known faults in a copy of the repo, one at a time; each must fail a test"
	@echo "make mutation  mutation testing of the core modules; prints the score per file and the survivors"
	@echo "make bench   time releases against the Temporal floor on its own server and workers; a table and bench.json"
	@echo "make demo-postgres  the demo with the ledger in a local PostgreSQL (LEDGER_URL)"
	@echo "make dashboard  the release dashboard, http://127.0.0.1:8080 by default (DASHBOARD_PORT); Ctrl+C stops it"
	@echo "make server | worker | stop-worker | kill-worker | release KEY=... | histories | screenshots | lint | clean-workspace"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: run make PYTHON=python3.11 ...")'
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

# The dev server persists to $(STATE)/dev.db, so a restart loses no release.
server: $(STAMP)
	@mkdir -p $(STATE)
	@if [ -n "$$TEMPORAL_ADDRESS" ] && [ "$$TEMPORAL_ADDRESS" != "localhost:$(PORT)" ]; then \
	  echo "TEMPORAL_ADDRESS=$$TEMPORAL_ADDRESS: using that server, not starting a local one"; \
	elif $(call listening,$(PORT)); then \
	  echo "Temporal server already listening on localhost:$(PORT)"; \
	else \
	  $(DETACH) $(TEMPORAL) server start-dev --ip 127.0.0.1 --port $(PORT) --ui-port $(UI_PORT) \
	    --db-filename $(STATE)/dev.db --log-level warn \
	    --search-attribute ReleaseKey=Keyword --search-attribute ReleaseStatus=Keyword \
	    > $(STATE)/server.log 2>&1 < /dev/null & echo $$! > $(STATE)/server.pid; \
	  for i in $$(seq 60); do \
	    $(TEMPORAL) operator cluster health --address localhost:$(PORT) >/dev/null 2>&1 && break; \
	    $(call alive,$(STATE)/server.pid) || { cat $(STATE)/server.log; echo "Temporal server failed to start"; exit 1; }; \
	    sleep 0.5; \
	  done; \
	  $(TEMPORAL) operator cluster health --address localhost:$(PORT) >/dev/null 2>&1 \
	    || { echo "Temporal server did not become ready; see $(STATE)/server.log"; exit 1; }; \
	  echo "Temporal server started on localhost:$(PORT), Web UI $(UI) (log: $(STATE)/server.log)"; \
	fi

# A worker keeps the settings it started with (FAILURE_RATE, DEMO_STEP_SECONDS, ...): they are
# recorded in $(STATE)/worker.settings, so a later `make worker` asking for others says so
# (and fails) instead of silently going on with the old ones; `make release` says so and uses it. The old log is removed before a
# start, and readiness is the new worker's own "Worker ready (pid N)" line.
worker: server
	@settings="$$($(PY) run_worker.py --settings)" || exit 2; \
	if $(call alive,$(STATE)/worker.pid); then \
	  if [ -n "$(filter worker,$(MAKECMDGOALS))" ]; then \
	    $(PY) run_worker.py --check-running $(STATE) || exit 1; \
	  else \
	    $(PY) run_worker.py --check-running $(STATE) || echo "This release runs on that worker as it is."; \
	  fi; \
	else \
	  rm -f $(STATE)/worker.log $(STATE)/worker.settings; \
	  $(DETACH) $(PY) run_worker.py > $(STATE)/worker.log 2>&1 < /dev/null & pid=$$!; \
	  echo $$pid > $(STATE)/worker.pid; echo "$$settings" > $(STATE)/worker.settings; \
	  for i in $$(seq 60); do \
	    grep -q "Worker ready (pid $$pid)" $(STATE)/worker.log && break; \
	    $(call alive,$(STATE)/worker.pid) || { cat $(STATE)/worker.log; echo "Worker failed to start"; exit 1; }; \
	    sleep 0.5; \
	  done; \
	  grep -q "Worker ready (pid $$pid)" $(STATE)/worker.log \
	    || { echo "Worker (pid $$pid) not ready after 30 s; see $(STATE)/worker.log"; exit 1; }; \
	  echo "Worker started (pid $$pid, log: $(STATE)/worker.log) with $$settings"; \
	fi

KEY ?= RELEASE-NOV-23-INITIAL
release: worker
	@$(PY) run_workflow.py --release-key $(KEY)

demo: release
	@for env in DEV TEST QC PROD; do printf '  %-5s %s\n' $$env "$$(ls -p $(WORKSPACE)/environments/$$env | grep -v / | tr '\n' ' ')"; done
	@echo "Web UI: $(UI)/namespaces/default/workflows   (make stop ends the worker and server)"
	@echo "Dashboard: make dashboard, then open $$($(PY) run_dashboard.py --url)"

# The same demo with the ledger in a local PostgreSQL (resources/local_postgres.py; make stop stops it too).
demo-postgres: $(STAMP)
	@url="$$($(PY) resources/local_postgres.py start)" || exit 1; \
	echo "LEDGER_URL=$$url"; LEDGER_URL="$$url" $(MAKE) --no-print-directory demo

# The dashboard in the foreground, on the workspace and server the demo used; read-only unless a trusted proxy is
# configured (setup.md, The dashboard).
dashboard: $(STAMP)
	@$(PY) run_dashboard.py

# Stop what make started: SIGTERM, then SIGKILL if it is still there after 10 s.
stop_pid = if $(call alive,$(STATE)/$(1).pid); then \
	  pid=$$(cat $(STATE)/$(1).pid); kill $(2) $$pid; \
	  for i in $$(seq 40); do $(call alive,$(STATE)/$(1).pid) || break; sleep 0.25; done; \
	  $(call alive,$(STATE)/$(1).pid) && kill -9 $$pid; \
	  echo "Stopped $(1) (pid $$pid)"; \
	fi; rm -f $(STATE)/$(1).pid $(STATE)/$(1).settings

stop: stop-worker
	@$(call stop_pid,server)
	@if [ -x $(PY) ]; then $(PY) resources/local_postgres.py stop; fi

# Ctrl+C for the background worker: steps in flight get 5 s to finish.
stop-worker:
	@$(call stop_pid,worker)

# A crash: the worker gets no chance to clean up (demos.md, demo 2).
kill-worker:
	@$(call stop_pid,worker,-9)

# Tests mostly wait (on servers, timers, other processes), so they run TEST_WORKERS at a time (4 and 8 were
# slower on 2 cores). The run keeps compiled bytecode even where the shell sets PYTHONDONTWRITEBYTECODE: its
# 300-odd Python processes would otherwise each compile the project again, and pytest rewrite every test file.
TEST_WORKERS ?= 6
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(TEST_WORKERS) --maxschedchunk 1

# The durability proof alone, harder than in `make test`: more strikes, and a random seed
# each time (the summary names it; CHAOS_SEED=n replays one).
chaos: $(STAMP)
	CHAOS_SEED=$${CHAOS_SEED:-random} CHAOS_KILLS=$${CHAOS_KILLS:-5} CHAOS_EXITS=$${CHAOS_EXITS:-4} \
	  $(PY) -m pytest --timeout 1800 tests/test_chaos.py

# Faults that once went unnoticed, planted again in a copy of the repo: each must fail a test.
faults: $(STAMP)
	$(PY) -m tests.planted_faults $(ARGS)

# Mutation testing of the four core modules with the fast tests; not part of `make test` (it takes
# hours for every mutant; MUTANTS='shared.*' picks some). Results stay in mutants/: a rerun tests
# what changed and the last survivors. `make mutation ARGS=--report` prints the last figures.
MUTANTS ?=
MUTATION_CHILDREN ?= 1
mutation: $(STAMP)
	set -f; $(PY) resources/mutation.py --max-children $(MUTATION_CHILDREN) $(ARGS) $(MUTANTS)

# Re-record the replay tests' histories; only for a deliberate, versioned workflow change.
histories: $(STAMP)
	$(PY) -m tests.record_histories

# Release latency, the floor Temporal sets, throughput, retries, history and ledger figures, then the dashboard's
# page times at 50 containers x 4 environments x 200 releases: Markdown tables and bench.json. Its own dev servers, workers and workspace; BENCH_RUNS, BENCH_THROUGHPUT, BENCH_WORKERS; ARGS=--quick.
bench: $(STAMP)
	$(PY) resources/bench.py $(ARGS)
	$(PY) resources/bench_dashboard.py $(filter --quick,$(ARGS))

# Real screenshots of the Web UI and of the dashboard for the docs (needs Debian's chromium); their own servers
# and workers on free ports.
screenshots: $(STAMP)
	$(PY) resources/screenshots.py
	$(PY) resources/dashboard_screenshots.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Empty the workspace folders (artifacts, deployed files, ledger); the folders stay.
clean-workspace:
	find $(WORKSPACE)/artifactory $(WORKSPACE)/environments -type f ! -name .gitkeep -delete
	rm -f $(WORKSPACE)/ledger.jsonl $(WORKSPACE)/ledger.index.sqlite $(WORKSPACE)/ledger.index.sqlite-wal $(WORKSPACE)/ledger.index.sqlite-shm
