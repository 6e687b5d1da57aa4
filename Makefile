# Two entry points a newcomer needs: `make demo` and `make test`. Both install what they need into
# ./.venv first (Python 3.11+, pip; nothing else).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench install clean pretrained

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

# Rebuild the shipped DPN (model/weights/pretrained.pt) from the Debian wallpaper photos and the
# CUHK mask shapes: make pretrained MASKS=/path/to/cuhk_gt [OUT=file.pt]  (about an hour on 2
# CPU cores; docs/pretrained.md)
OUT ?= model/weights/pretrained.pt
pretrained: $(STAMP)
	@test -n "$(MASKS)" || { echo "usage: make pretrained MASKS=/path/to/cuhk_gt [OUT=file.pt] (CUHK masks)"; exit 2; }
	$(BIN)/python -m blurset.model.pretrained build --masks "$(MASKS)" --out "$(OUT)"

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
