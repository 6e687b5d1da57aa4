# Two entry points a newcomer needs: `make demo` and `make test`. Both install what they need into
# ./.venv first (Python 3.11+, pip; nothing else).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench install clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/blurset demo --dir demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The unit tests alone (no servers, no training runs): under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check blurset pipeline annotation model tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/hashing.py
	$(BIN)/python benchmarks/dedup_quality.py
	$(BIN)/python benchmarks/dedup_search.py
	$(BIN)/python benchmarks/release_write.py
	$(BIN)/python benchmarks/dpn_inference.py

clean:
	rm -rf demo workspace .pytest_cache
