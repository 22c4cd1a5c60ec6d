# Quick start: `make serve` (app on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
SHARED_DIR ?= ../shared
ARCHIVE := $(SHARED_DIR)/datasets/cifar10-train-jpeg.tar.gz
CHROMIUM ?= /usr/bin/chromium

.PHONY: install data browser serve test bench-train bench-serve soak

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# Unpack the shared CIFAR-10 JPEG archive into data/ when it is there and data/ is not.
data:
	@if [ -d data/train ]; then echo "data/train present"; \
	elif [ -f $(ARCHIVE) ]; then mkdir -p data && tar -xzf $(ARCHIVE) -C data && echo "unpacked $(ARCHIVE) into data/"; \
	else echo "no $(ARCHIVE): tests needing real images will skip"; fi

# Debian's Chromium for the Playwright tests (playwright cannot download browsers here).
browser:
	@if [ -x $(CHROMIUM) ]; then echo "chromium present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "no $(CHROMIUM) and not root: browser tests will skip"; fi

serve: install data
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: install data browser
	$(BIN)/python -m pytest

bench-train: install data
	$(BIN)/python scripts/bench_train.py

# Served throughput, latency and memory under load against the in-process ceiling (see README).
bench-serve: install data
	$(BIN)/python scripts/bench_serve.py

# 16 clients for 5 minutes: photos, bad inputs and a retraining job at once (`make test` runs 60 s).
soak: install data
	$(BIN)/python scripts/soak.py --clients 16 --seconds 300
