# Quick start:  make demo   (setup + synthetic data + train + export + invoke the handler)
#               make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
DEV_STAMP := $(VENV)/.dev-stamp
DEMO_DATA := data/synthetic
DEMO_OUT  := artifacts/model

.PHONY: setup dev demo test test-fast bench bench-cold-start lint clean

# Idempotent: reinstalls only when pyproject.toml or requirements.txt change.
# setup: the serving pins + the training extras (what demo, train and bench need);
# dev: + the test and lint tools (what test, test-fast and lint need).
setup: $(STAMP)
dev: $(DEV_STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e ".[train]"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements.txt -e ".[train,dev]"
	touch $(DEV_STAMP)

demo: setup
	$(BIN)/python -m busi_classifier synthesize --out $(DEMO_DATA) --per-class 100 --seed 0
	$(BIN)/python train.py --data $(DEMO_DATA) --out $(DEMO_OUT) --weights none \
		--image-size 96 --epochs-head 12 --epochs-fine-tune 0 --batch-size 16
	$(BIN)/python -m busi_classifier invoke --model $(DEMO_OUT) --data $(DEMO_DATA) --per-class 2

# Two workers (pytest-xdist): on the 2-core development machine, otherwise idle, the 1,488 tests took
# 19 min 29 s (2026-12-02, 1,487 passed and 1 skipped). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-fast: dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

# Serving benchmarks into BENCHMARKS.md (BENCH_MODEL=folder of a trained model; the demo's by default).
BENCH_MODEL ?= $(DEMO_OUT)
bench: setup
	test -f $(BENCH_MODEL)/model.json || $(MAKE) demo
	$(BIN)/python benchmarks/serving.py --model $(BENCH_MODEL)

# Cold start, warm Duration, peak RSS and cost per million under the real Lambda emulator.
bench-cold-start: setup
	test -f $(BENCH_MODEL)/model.json || $(MAKE) demo
	$(BIN)/python benchmarks/cold_start.py --model $(BENCH_MODEL)

lint: dev
	$(BIN)/ruff check .

clean:
	rm -rf artifacts $(DEMO_DATA) .pytest_cache
