# ssl_zoo: every target is self-sufficient on a fresh machine (it creates .venv when missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
FMNIST_ROOT ?= /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: train test lint bench data clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The default data set: Fashion-MNIST from Debian's dataset-fashion-mnist package (offline, 30 MB).
data:
	@if [ -f $(FMNIST_ROOT)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FMNIST_ROOT)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or point data.root at a folder holding the four idx .gz files"; exit 2; \
	fi

train: $(STAMP) data
	$(BIN)/ssl-zoo train experiment=default_fashion_mnist $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ssl_zoo tests

# lightly (the other side of the benchmark) is the optional `bench` extra, never a run-time dependency.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

# Training speed, ours against lightly's building blocks (BENCHMARKS.md); e.g. ARGS="device=cuda sweep=all"
bench: $(BENCH_STAMP)
	$(BIN)/ssl-zoo bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
