# The two commands of the README.  Each makes its own virtual environment on first use.
#   make search   the main job: `nas-sepconv search` on the embedded data set (scikit-learn digits)
#   make test     ruff (format check and lint), then the test suite (the default run; `make test-slow`
#                 adds the long tests); `make lint` runs ruff alone, `make format` rewrites the code
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: search test test-slow lint format clean

search: $(VENV)/.installed
	$(BIN)/nas-sepconv search

test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "slow or not slow"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
