PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test demo lint bench clean

$(BIN)/vxl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/vxl

install: $(BIN)/vxl

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

demo: install
	$(BIN)/vxl demo

clean:
	rm -rf $(VENV) demo_out .pytest_cache
