PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint bench clean

$(BIN)/vxl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import model, storage, tasks, flows, vico_synth, torch, lancedb, ray, prefect, decord, open_clip"
	touch $(BIN)/vxl

install: $(BIN)/vxl

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

demo: install
	$(BIN)/vxl demo

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
