# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv from the pinned lock file if needed and reuse it afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.privspk-installed
DATA   ?= data

.PHONY: venv demo deploy-demo test test-all corpus bench clean-data

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $(STAMP)

corpus: venv
	$(BIN)/privspk prepare --data $(DATA)

demo: corpus
	$(BIN)/privspk demo --data $(DATA)

# the same federation through Flower: a SuperLink and 3 client SuperNodes on 127.0.0.1, separate processes
deploy-demo: corpus
	$(BIN)/privspk deploy-demo --data $(DATA)

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: venv
	$(BIN)/privspk bench secagg
	$(BIN)/privspk bench dp --data $(DATA)

clean-data:
	rm -rf $(DATA)
