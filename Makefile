# aiflowd: every user-facing job is a target over the one CLI, `aiflowd`.
# Targets marked (root) build network namespaces and must run as root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := data/model/aiflowd-default.joblib
GENERATED := firmware/generated
CAPTURE ?= build/capture
DATASET ?= build/dataset
# The report reads the dataset once `make dataset` has made it, else the
# embedded capture.
REPORT_DATA ?= $(if $(wildcard $(DATASET)/flows.csv),$(DATASET),data/capture-1)

.PHONY: help venv demo test test-fast train codegen capture dataset report testbed-demo \
	testbed-clean clean

help:
	@echo "make demo          train on data/, generate code, replay the embedded trace"
	@echo "make test          run the test suite (root-only tests skip without root)"
	@echo "make train         fit and evaluate models into build/train"
	@echo "make codegen       regenerate $(GENERATED)/ from $(MODEL)"
	@echo "make capture       record a new labeled capture into $(CAPTURE) (root)"
	@echo "make dataset       record the full dataset into $(DATASET) (root, about 15 min)"
	@echo "make report        evaluation report of $(REPORT_DATA) into build/report"
	@echo "make testbed-demo  live traffic, live conntrack, live runtime (root, about 4 min)"
	@echo "make testbed-clean remove testbed namespaces left by a killed run (root)"
	@echo "make test-fast     the test suite without the live testbed runs"
	@echo "make clean         remove build/"

venv: $(STAMP)

# The environment is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/aiflowd demo

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

train: $(STAMP)
	$(BIN)/aiflowd train --out build/train

codegen: $(STAMP)
	$(BIN)/aiflowd codegen --model $(MODEL) --out $(GENERATED)

capture: $(STAMP)
	$(BIN)/aiflowd capture --out $(CAPTURE) --card

# At least 6,000 labeled flows in real time: 560 sessions at once for 600 s of
# session starts, then about 4 minutes until the last session ends.
dataset: $(STAMP)
	$(BIN)/aiflowd capture --out $(DATASET) --duration 600 --concurrency 560 --seed 1 \
		--workers 2 --server-processes 2 --capture-id dataset-1 --card

report: $(STAMP)
	$(BIN)/aiflowd report --data $(REPORT_DATA)/flows.csv --out build/report

testbed-demo: $(STAMP)
	$(BIN)/aiflowd testbed-demo

testbed-clean: $(STAMP)
	$(BIN)/aiflowd testbed-clean

clean:
	rm -rf build
