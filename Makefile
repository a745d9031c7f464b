# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint format bench bench-quick soak fuzz clean

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
	$(BIN)/ruff format --check proxy tests bench fuzz
	$(BIN)/ruff check proxy tests bench fuzz
	$(BIN)/mypy
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff format proxy tests bench fuzz
	$(BIN)/ruff check --fix proxy tests bench fuzz

# LiteLLM's proxy is a further column when it installs (its own venv: its pins must not touch ours).
LITELLM := bench/.litellm-venv/bin/litellm
$(LITELLM):
	-$(PYTHON) -m venv bench/.litellm-venv && bench/.litellm-venv/bin/pip install --quiet 'litellm[proxy]'

# Portkey's gateway (node) likewise, into bench/.portkey; bench/install-portkey.sh pins what it needs to stream.
PORTKEY := bench/.portkey/node_modules/@portkey-ai/gateway/build/start-server.js
$(PORTKEY): bench/install-portkey.sh
	-bash bench/install-portkey.sh

bench: $(STAMP) $(LITELLM) $(PORTKEY)
	bash tests/install-system-deps.sh
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	bash tests/install-system-deps.sh
	$(BIN)/python -m bench.run --quick

# Streaming load with locust (bench/locustfile_sse.py; LOAD_DIALECT=anthropic, gemini or bedrock for another
# API): LOAD_USERS streams open at once for LOAD_TIME, then the summary. Against LOAD_HOST when it is set, else
# against a teeproxy started here on a free port with LOAD_CONFIG and the demo upstream (the provider keys are
# unset for it: a load test never reaches a paid API by accident), stopped by its PID afterwards.
LOAD_USERS ?= 20
LOAD_TIME ?= 30s
LOAD_CONFIG ?= config/teeproxy.toml
.PHONY: load
load: $(STAMP)
	@host='$(LOAD_HOST)'; \
	if [ -z "$$host" ]; then \
		port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
		host=http://127.0.0.1:$$port; \
		env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u GEMINI_API_KEY -u BEDROCK_API_KEY \
			$(BIN)/teeproxy serve --config '$(LOAD_CONFIG)' --bind 127.0.0.1:$$port & pid=$$!; \
		trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' EXIT; trap 'exit 130' INT TERM; \
		echo "make load: teeproxy (pid $$pid) on $$host with $(LOAD_CONFIG) and the demo upstream"; \
		tries=0; until curl -sf $$host/healthz >/dev/null; do \
			tries=$$((tries + 1)); if [ $$tries -gt 150 ] || ! kill -0 $$pid 2>/dev/null; then exit 1; fi; sleep 0.2; \
		done; \
	fi; \
	$(BIN)/locust -f bench/locustfile_sse.py --headless -u $(LOAD_USERS) -r $(LOAD_USERS) -t $(LOAD_TIME) \
		--host $$host --only-summary

# Faults on both sides through a real `teeproxy serve`, then the ledger audit (bench/soak.py). Streams and time
# bound: SOAK_STREAMS (100000), SOAK_TIME_LIMIT_S (900); also SOAK_CONCURRENCY, SOAK_SEED; SOAK_ARGS=--json.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# The atheris harness over the sidecar parsers (fuzz/fuzz_parsers.py) for FUZZ_SECONDS; the corpus is kept.
FUZZ_SECONDS ?= 60
FUZZ_CORPUS ?= /tmp/teeproxy-fuzz/corpus
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install --quiet -e '.[fuzz]'
	mkdir -p $(FUZZ_CORPUS) $(FUZZ_CORPUS)/../artifacts
	$(BIN)/python -m fuzz.fuzz_parsers -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=$(FUZZ_CORPUS)/../artifacts/ $(FUZZ_CORPUS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
