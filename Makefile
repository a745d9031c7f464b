# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint format bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/teeproxy serve --config config/teeproxy.toml

test: $(STAMP)
	bash tests/install-system-deps.sh
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/ruff check proxy tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff format proxy tests bench
	$(BIN)/ruff check --fix proxy tests bench

# LiteLLM's proxy is a further column when it installs (its own venv: its pins must not touch ours).
LITELLM := bench/.litellm-venv/bin/litellm
$(LITELLM):
	-$(PYTHON) -m venv bench/.litellm-venv && bench/.litellm-venv/bin/pip install --quiet 'litellm[proxy]'

bench: $(STAMP) $(LITELLM)
	bash tests/install-system-deps.sh
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	bash tests/install-system-deps.sh
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
