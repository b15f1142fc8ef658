# The two commands: `make demo` (the main job on the embedded default) and `make test`.
.PHONY: demo test setup setup-dev lock lint bench

setup:
	./scripts/setup.sh

setup-dev:
	./scripts/setup.sh --dev

# Fresh state in $POLENG_HOME (default ./data), first champion, then a simulated week of traffic.
demo: setup
	.venv/bin/poleng reset --yes
	.venv/bin/poleng init
	.venv/bin/poleng simulate full_simulation
	.venv/bin/poleng models
	@echo ""
	@echo "Look at the results:"
	@echo "  .venv/bin/poleng status          # the ledger: one row per batch"
	@echo "  .venv/bin/poleng ui              # MLflow UI on http://127.0.0.1:5000 (runs, models, drift reports)"
	@echo "  ls data/contacts data/reports data/quarantine"

test: setup-dev
	.venv/bin/ruff check .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .

lock:
	uv pip compile -q -p python3.11 requirements.in --override overrides.txt -o requirements.txt
	uv pip compile -q -p python3.11 requirements-dev.in --override overrides.txt -o requirements-dev.txt

bench: setup
	.venv/bin/python bench/init_training.py
	.venv/bin/python bench/batch_flow.py
