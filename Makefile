PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs exactly what uv.lock pins (every direct and transitive dependency, dev extras included).
# Its own version is pinned here and in the lock (dev extra), so the bootstrap and the sync agree.
UV_VERSION := 0.13.9
UV := $(BIN)/uv
# Optional extras from pyproject.toml to install too (all pinned by the lock), e.g. EXTRAS="dev torchcodec".
EXTRAS ?= dev
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# uv trusts its bundled roots; use the system's store where there is one (as pip here does).
ifneq ($(wildcard /etc/ssl/certs/ca-certificates.crt),)
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt
endif
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

# Any failing command stops make with its exit status (no pipes that hide errors).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

.PHONY: install test demo lint bench clean lock upgrade-check

$(BIN)/vxl: pyproject.toml uv.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "uv==$(UV_VERSION)"
	$(UV) sync --locked $(addprefix --extra ,$(EXTRAS))
	$(BIN)/python -c "import model, storage, tasks, flows, vico_synth, torch, lancedb, ray, prefect, decord, open_clip"
	$(BIN)/python -m model.environment --check
	touch $(BIN)/vxl

install: $(BIN)/vxl

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

demo: install
	$(BIN)/vxl demo

lint: install
	$(BIN)/ruff check .

# Re-resolve uv.lock after editing pyproject.toml (keeps every other pin; see docs/OPERATIONS.md).
lock: install
	$(UV) lock

# Resolve the newest versions pyproject.toml allows into a scratch venv and run the fidelity tests
# there (oracle, Qwen2/CLIP equivalence, archive vs fresh encode, drift invariants, canary).
# Touches neither uv.lock nor .venv. docs/OPERATIONS.md: "Upgrading dependencies".
upgrade-check: install
	$(BIN)/python tests/upgrade_check.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .upgrade-check
